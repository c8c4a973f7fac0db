"""``python -m herald_cli``: operator commands for a running Herald.

    python -m herald_cli redrive --from-dlq [--id ID]... [--tenant T] [--reason REGEX]
                                 [--since TIME] [--limit N] [--to retry|class] [--dry-run]
    python -m herald_cli quota --provider fcm --rate 500 --burst 50 [--tenant acme]
    python -m herald_cli segments load NAME FILE --tenant T
    python -m herald_cli users load FILE --tenant T [--skip-invalid]

Settings (Kafka, Redis, topic names) come from ``HERALD_*`` env vars / ``HERALD_CONFIG``, as
everywhere in Herald; docs/CLI.md describes every command. Each command module has
``register(commands)``, which adds its parser with a ``run(args, settings)`` default that
returns the report to print.
"""
from __future__ import annotations

import argparse
import sys

from herald.errors import HeraldError
from herald.settings import load_settings

COMMAND_MODULES = ("herald_cli.redrive", "herald_cli.quota", "herald_cli.segments")


def main(argv: list[str] | None = None) -> int:
    import importlib
    parser = argparse.ArgumentParser(prog="python -m herald_cli",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    args = parser.parse_args(argv)
    try:
        print(args.run(args, load_settings()))
    except HeraldError as exc:
        print(f"herald_cli {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
