"""What the Python producer scripts of this directory share: their command line, their log on
stderr (stdout is for what the script reports) and the bound on the whole run.

The scripts import it as `common`: Python puts a script's own directory first on sys.path.
"""

import argparse
import logging
import sys

# Bound on the whole run: the tests' own timeout is longer, so a hang is reported from here.
DEADLINE_S = 60


def producer_parser(description, count_help=None):
    """The arguments every producer script takes; a script adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--library", required=True, choices=["kafka-python", "aiokafka"])
    parser.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--count", type=int, required=True, help=count_help)
    parser.add_argument("--prefix", default="rec")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    return parser


def parse(parser):
    """Parses the command line and sends the libraries' log to stderr at --log-level."""
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args
