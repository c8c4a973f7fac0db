"""Run the API on its own event loop in a background thread: for tests and benchmarks that
drive it over real HTTP from synchronous code."""
from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from herald.settings import Settings
from herald_api.app import create_app


class ApiServer:
    """``with ApiServer(settings) as api: requests.get(api.url + "/healthz")``."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0, **app_kwargs):
        self.settings, self.host, self.port = settings, host, port
        self.app = create_app(settings, **app_kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="herald-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "ApiServer":
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the API did not start in {timeout_s}s")
        if self._error is not None:
            raise RuntimeError("the API failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()
