"""``python -m herald_stack install|up|down|status``: the local stack, started by the project."""
from __future__ import annotations

import argparse
import sys

from herald.settings import load_settings
from herald_stack.components import Stack
from herald_stack.processes import StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herald_stack", description=__doc__)
    parser.add_argument("command", choices=["install", "up", "down", "status"])
    parser.add_argument("--flink-cluster", action="store_true",
                        help="also start a standalone Flink cluster (dashboard on the REST port)")
    parser.add_argument("--no-mocks", action="store_true", help="do not start the provider mocks")
    args = parser.parse_args(argv)
    settings = load_settings()
    stack = Stack(settings)
    try:
        if args.command == "install":
            stack.install()
        elif args.command == "up":
            stack.up(flink_cluster=args.flink_cluster, mocks=not args.no_mocks)
            print(f"kafka {settings.kafka_bootstrap} · redis {settings.redis_host}:{settings.redis_port}"
                  + (f" · flink dashboard http://localhost:{settings.flink_rest_port}"
                     if args.flink_cluster else ""))
        elif args.command == "down":
            print("stopped: " + (", ".join(stack.down()) or "nothing was running"))
        else:
            for name, running in stack.status().items():
                print(f"{name:20s} {'running' if running else 'stopped'}")
    except StackError as exc:
        print(f"herald_stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
