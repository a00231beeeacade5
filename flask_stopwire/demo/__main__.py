"""Run the demo provider: `python -m flask_stopwire.demo --port 0` prints the URL it serves."""

import argparse
import os
import sys

import gevent

from flask_stopwire.demo.script import Script
from flask_stopwire.demo.server import serve


def main() -> None:
    """Parse flags, serve until killed (or until the parent process is gone)."""
    parser = argparse.ArgumentParser(prog="python -m flask_stopwire.demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ttft", type=float, default=Script.ttft)
    parser.add_argument("--gap", type=float, default=Script.gap)
    parser.add_argument("--tokens", type=int, default=Script.tokens)
    parser.add_argument(
        "--record-text",
        action="store_true",
        help="keep each request's prompt and messages in /demo/streams (tests only)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when the process that started this one is gone",
    )
    args = parser.parse_args()
    defaults = Script(ttft=args.ttft, gap=args.gap, tokens=args.tokens)
    server = serve(args.host, args.port, defaults, args.record_text)
    host, port = server.address[:2]
    # The first line of stdout is the contract with whoever started us.
    sys.stdout.write(f"http://{host}:{port}/v1\n")
    sys.stdout.flush()
    parent = os.getppid()
    while not args.exit_with_parent or os.getppid() == parent:
        gevent.sleep(1.0)


if __name__ == "__main__":
    main()
