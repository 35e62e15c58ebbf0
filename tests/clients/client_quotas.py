#!/usr/bin/env python3
"""Client quotas (Kafka APIs 48 and 49) with kafka-python's admin client. kafka-python 3.0
ships the AlterClientQuotas and DescribeClientQuotas messages but no admin method for them,
so this script sends them through KafkaAdminClient's own connection manager.

  alter    --entity TYPE=NAME (NAME empty: the default entity) --set KEY=VALUE / --remove KEY
  describe --entity TYPE=NAME (exact match; TYPE= : the default; TYPE=* : any) [--strict]

Prints the answer as JSON on stdout and exits 0; an error goes to stderr with exit status 1.
Used by tests/tests/e2e/quotas.rs.
"""

import argparse
import json
import logging
import sys


def entity_arg(text):
    entity_type, _, name = text.partition("=")
    return entity_type, (name if name != "" else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["alter", "describe"])
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--entity", action="append", default=[], type=entity_arg)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--remove", action="append", default=[], help="KEY")
    parser.add_argument("--validate-only", action="store_true")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper())

    from kafka import KafkaAdminClient
    from kafka.protocol.admin.client_quotas import (
        AlterClientQuotasRequest,
        DescribeClientQuotasRequest,
    )

    admin = KafkaAdminClient(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="strom-tests-kafka-python",
        request_timeout_ms=30000,
    )
    try:
        if args.command == "alter":
            entry = AlterClientQuotasRequest.EntryData
            ops = [
                entry.OpData(key=k, value=float(v), remove=False)
                for k, _, v in (s.partition("=") for s in args.set)
            ] + [entry.OpData(key=k, value=0.0, remove=True) for k in args.remove]
            request = AlterClientQuotasRequest(
                entries=[
                    entry(
                        entity=[
                            entry.EntityData(entity_type=t, entity_name=n)
                            for t, n in args.entity
                        ],
                        ops=ops,
                    )
                ],
                validate_only=args.validate_only,
            )
        else:
            component = DescribeClientQuotasRequest.ComponentData
            components = []
            for t, n in args.entity:
                if n is None:
                    components.append(component(entity_type=t, match_type=1, match=None))
                elif n == "*":
                    components.append(component(entity_type=t, match_type=2, match=None))
                else:
                    components.append(component(entity_type=t, match_type=0, match=n))
            request = DescribeClientQuotasRequest(components=components, strict=args.strict)

        async def send():
            return await admin._manager.send(request)

        response = admin._manager.run(send)
    except Exception as error:
        print(f"{args.command} failed: {error!r}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    print(json.dumps(response.to_dict(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
