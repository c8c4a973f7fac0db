"""``python -m herald_api [--host H] [--port P]``: serve the HTTP API."""
from __future__ import annotations

import argparse
import logging

from aiohttp import web

from herald.settings import load_settings
from herald_api.app import create_app


def main(argv: list[str] | None = None) -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m herald_api", description=__doc__)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    web.run_app(create_app(settings), host=args.host, port=args.port, access_log=None,
                print=lambda msg: logging.getLogger("herald_api").info(msg.strip()))


if __name__ == "__main__":
    main()
