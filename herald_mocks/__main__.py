"""``python -m herald_mocks --provider fcm --port 18101`` or ``python -m herald_mocks --all``.

Prints ``herald-mock <provider> listening on <host>:<port>`` once each socket accepts
connections (scripts wait for that line); ``--port 0`` picks a free port and prints it.
SIGTERM/SIGINT flush the log files and exit 0.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from herald_mocks import PROVIDERS
from herald_mocks.core import ConfigError, MockConfig, MockState, now_epoch_ms
from herald_mocks.server import MockServer


def make_provider(name: str, apns_allow_http1: bool = False):
    """The wire-format half of a mock, by provider name."""
    if name == "fcm":
        from herald_mocks.fcm import FcmMock
        return FcmMock()
    if name == "apns":
        from herald_mocks.apns import ApnsMock
        return ApnsMock(allow_http1=apns_allow_http1)
    if name == "twilio":
        from herald_mocks.twilio import TwilioMock
        return TwilioMock()
    if name == "sendgrid":
        from herald_mocks.sendgrid import SendGridMock
        return SendGridMock()
    raise ValueError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m herald_mocks", description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--provider", choices=PROVIDERS)
    which.add_argument("--all", action="store_true",
                       help="all four mocks in one process, on the ports from Settings")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=None,
                    help="default: the provider's mock port from Settings; 0 = any free port")
    ap.add_argument("--log", metavar="FILE",
                    help="also append every record as a JSON line to FILE "
                         "('{provider}' in the name is replaced; required with --all)")
    ap.add_argument("--quota", type=int, metavar="N", help="accept at most N requests per second")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--latency-jitter-ms", type=float, default=0.0,
                    help="extra latency drawn uniformly from [0, N] ms (seeded)")
    ap.add_argument("--failure-rate", type=float, default=0.0,
                    help="fraction of requests answered with a retryable 5xx (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--invalid", action="append", default=[], metavar="RECIPIENT",
                    help="token/number/email answered with the provider's permanent error")
    ap.add_argument("--invalid-file", metavar="FILE", help="one invalid recipient per line")
    ap.add_argument("--apns-allow-http1", action="store_true",
                    help="let the APNs mock answer /3/device/ over HTTP/1.1 too")
    ap.add_argument("--outage", metavar="START_S:DURATION_S[:503|refuse]",
                    help="an outage starting START_S seconds after start-up")
    ap.add_argument("--max-client-connections", type=int, metavar="N",
                    help="serve at most N connections per client address; reset the others")
    ap.add_argument("--callbacks", action="store_true",
                    help="post delivery receipts (Twilio status callbacks, SendGrid events)")
    ap.add_argument("--callback-url", metavar="URL",
                    help="where receipts go (SendGrid needs it; Twilio: instead of StatusCallback)")
    ap.add_argument("--bounce", action="append", default=[], metavar="RECIPIENT",
                    help="accept, then report undeliverable in the receipt")
    args = ap.parse_args(argv)
    if args.all and args.log and "{provider}" not in args.log:
        ap.error("--log with --all needs '{provider}' in the file name")
    if args.all and args.port is not None:
        ap.error("--port cannot be used with --all (ports come from Settings)")
    return args


def config_from_args(args: argparse.Namespace) -> MockConfig:
    invalid = list(args.invalid)
    if args.invalid_file:
        with open(args.invalid_file, encoding="utf-8") as fh:
            invalid += [line.strip() for line in fh if line.strip()]
    changes: dict = {"quota_rps": args.quota, "latency_ms": args.latency_ms,
                     "latency_jitter_ms": args.latency_jitter_ms,
                     "failure_rate": args.failure_rate, "seed": args.seed, "invalid": invalid,
                     "max_client_connections": args.max_client_connections,
                     "callbacks": args.callbacks, "callback_url": args.callback_url,
                     "bounce": list(args.bounce)}
    if args.outage:
        parts = args.outage.split(":")
        try:
            start_s, duration_s = float(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise ConfigError("--outage must be START_S:DURATION_S[:503|refuse]") from None
        changes["outage"] = {"start_in_s": start_s, "duration_s": duration_s,
                             "mode": parts[2] if len(parts) > 2 else "503"}
    config = MockConfig()
    config.update(changes, now_epoch_ms())
    return config


async def serve(args: argparse.Namespace) -> None:
    from herald.settings import load_settings
    settings = load_settings()
    names = PROVIDERS if args.all else (args.provider,)
    servers = []
    for name in names:
        port = args.port if args.port is not None else getattr(settings, f"mock_{name}_port")
        log = args.log.replace("{provider}", name) if args.log else None
        state = MockState(make_provider(name, args.apns_allow_http1), config_from_args(args), log)
        server = MockServer(state, args.host, port)
        await server.start()
        servers.append(server)
        print(f"herald-mock {name} listening on {args.host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except ConfigError as exc:
        print(f"herald-mock: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"herald-mock: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
