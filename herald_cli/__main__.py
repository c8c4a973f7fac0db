"""``python -m herald_cli``: operator commands for a running Herald.

    python -m herald_cli redrive --from-dlq [--limit N] [--to retry|class] [--dry-run]
    python -m herald_cli quota --provider fcm --rate 500 --burst 50 [--tenant acme]
    python -m herald_cli segments load NAME FILE.csv|FILE.parquet --tenant T
    python -m herald_cli users load FILE.csv|FILE.parquet --tenant T [--skip-invalid]

A command module can also plug itself in: list it in ``COMMAND_MODULES``; its
``register(commands)`` adds its parsers, each with a ``run(args, settings)`` default that
returns the line to print (a ``ValidationError`` is printed as an error, exit status 1).

Settings (Kafka, Redis, topic names) come from ``HERALD_*`` env vars / ``HERALD_CONFIG``, as
everywhere in Herald.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from herald.errors import ValidationError
from herald.settings import load_settings

# Modules with ``register(commands)``: their commands are added as they are.
COMMAND_MODULES = ("herald_cli.segments",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herald_cli",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    redrive = commands.add_parser(
        "redrive", help="send dead letters of the delivery stage back into the pipeline")
    redrive.add_argument("--from-dlq", action="store_true", required=True,
                         help="read the dead-letter topic (the only source there is)")
    redrive.add_argument("--limit", type=int, default=None, metavar="N",
                         help="re-drive at most N records (default: all not re-driven yet)")
    redrive.add_argument("--to", choices=("retry", "class"), default="retry",
                         help="retry: the class's retry topic, past the gate's dedup (default);"
                              " class: the class topic itself (only useful once the gate's"
                              " dedup window, dedup_ttl_ms, has passed)")
    redrive.add_argument("--dry-run", action="store_true",
                         help="show what would be re-driven; produce and commit nothing")
    redrive.add_argument("--group", default=None,
                         help="consumer group that remembers what was re-driven "
                              "(default: <consumer_group>-redrive)")

    quota = commands.add_parser("quota", help="change a provider's (or a tenant's) quota now")
    quota.add_argument("--provider", required=True, choices=("fcm", "apns", "twilio", "sendgrid"))
    quota.add_argument("--rate", type=float, required=True, help="requests per second")
    quota.add_argument("--burst", type=float, required=True, help="bucket size (requests)")
    quota.add_argument("--tenant", default=None, help="a tenant's own bucket at this provider")
    quota.add_argument("--no-control", action="store_true",
                       help="only write Redis; do not put the record on herald.control")

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)

    args = parser.parse_args(argv)
    settings = load_settings()
    if getattr(args, "run", None) is not None:
        try:
            print(args.run(args, settings))
        except ValidationError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        return 0
    if args.command == "redrive":
        from herald_cli.redrive import redrive_dlq
        if args.limit is not None and args.limit < 1:
            parser.error("--limit must be at least 1")
        report = redrive_dlq(settings, limit=args.limit, to=args.to, dry_run=args.dry_run,
                             group=args.group)
        print(report.summary())
        return 0
    if args.command == "quota":
        from herald_cli.quota import set_quota
        print(set_quota(settings, args.provider, args.rate, args.burst, tenant=args.tenant,
                        control=not args.no_control))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
