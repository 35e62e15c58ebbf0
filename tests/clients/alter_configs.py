#!/usr/bin/env python3
"""Dynamic configs of a broker or a topic with kafka-python's admin client against --bootstrap:

  set --type broker|topic --name N KEY=VALUE...      KafkaAdminClient.alter_configs (SET ops)
  delete --type broker|topic --name N KEY...         KafkaAdminClient.alter_configs (DELETE ops)
  describe --type broker|topic --name N [KEY...]     KafkaAdminClient.describe_configs

`set` and `delete` use IncrementalAlterConfigs (`--legacy`: AlterConfigs, which replaces the
resource's overrides with the given set) and print {"result": "OK" | "<ErrorClass>: message"}
for the resource; keys the broker does not list as dynamic are sent anyway, so that the
broker's own answer shows. `describe` prints {KEY: {"value", "source", "read_only"}, ...} for
every config of the resource (or the KEYs given). Exit status 0; a failure of the request as a
whole goes to stderr with exit status 1.

Used by tests/tests/e2e/admin_ops.rs; scripts/install-test-deps.sh installs kafka-python into
target/test-deps/venv.
"""

import argparse
import json
import logging
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ["set", "delete", "describe"]:
        command = commands.add_parser(name)
        command.add_argument("--type", required=True, choices=["broker", "topic"])
        command.add_argument("--name", required=True)
        command.add_argument("configs", nargs="*")
        if name != "describe":
            command.add_argument("--legacy", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper())

    from kafka import KafkaAdminClient
    from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType

    resource_type = ConfigResourceType[args.type.upper()]
    admin = KafkaAdminClient(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="strom-tests-kafka-python",
        request_timeout_ms=30000,
    )
    try:
        if args.command == "describe":
            resource = ConfigResource(resource_type, args.name, args.configs or None)
            described = admin.describe_configs([resource], config_filter="all")
            configs = described[args.type][args.name]
            print(json.dumps({
                key: {
                    "value": c.get("value"),
                    "source": c.get("config_source"),
                    "read_only": c.get("read_only"),
                }
                for key, c in sorted(configs.items())
            }))
            return 0
        if args.command == "set":
            configs = {}
            for item in args.configs:
                key, _, value = item.partition("=")
                configs[key] = value if args.legacy else (AlterConfigOp.SET, value)
        else:
            configs = {key: (AlterConfigOp.DELETE, None) for key in args.configs}
        resource = ConfigResource(resource_type, args.name, configs)
        results = admin.alter_configs(
            [resource], raise_on_unknown=False, incremental=not args.legacy
        )
        print(json.dumps({"result": results[args.type][args.name]}))
    except Exception as error:
        print(f"{args.command} failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
