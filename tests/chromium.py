"""Headless Chromium driven over the DevTools protocol (a websocket, with aiohttp): open a
local file with no network, evaluate JavaScript, collect console errors and requests,
take a screenshot. Used by the report's browser test and by bench/screenshot.py.

Chromium is started with its own throwaway profile, a debugging port chosen by itself
(read back from ``DevToolsActivePort``), a dead proxy and no background networking; it is
stopped (by its PID) when the context ends.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

__all__ = ["CHROMIUM", "Chromium", "Page", "find_chromium"]

CHROMIUM = "/usr/bin/chromium"


def find_chromium() -> str | None:
    """The Chromium binary (Debian's ``chromium``), or None."""
    for name in (CHROMIUM, "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab, attached with a flat session; events are collected as they come."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session
        self.console_errors: list[str] = []
        self.exceptions: list[str] = []
        self.requests: list[str] = []
        self.loaded = asyncio.Event()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.call(method, session=self.session, **params)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console_errors.append(str(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(str(params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.console_errors.append(str(params["entry"].get("text")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(str(params.get("request", {}).get("url")))
        elif method == "Page.loadEventFired":
            self.loaded.set()

    async def open(self, url: str, timeout: float = 30.0) -> None:
        """Navigate and wait for the load event."""
        self.loaded.clear()
        await self.call("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), timeout)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (returned by value: JSON-able)."""
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"evaluate failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(self, path: Path, width: int = 1000) -> None:
        """A PNG of the whole page, ``width`` CSS pixels wide."""
        height = int(await self.evaluate("document.documentElement.scrollHeight"))
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)
        shot = await self.call("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


class Chromium:
    """``async with Chromium() as browser: page = await browser.page()``."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        self.binary = binary or find_chromium() or CHROMIUM
        self.timeout = timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.profile = Path(tempfile.mkdtemp(prefix="batchproc-chromium-"))
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Chromium:
        self.proc = await asyncio.create_subprocess_exec(
            *[self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--disable-default-apps",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            port, path = await self._active_port()
            self._session = aiohttp.ClientSession()
            self._ws = await self._session.ws_connect(f"ws://127.0.0.1:{port}{path}",
                                                      max_msg_size=0)
            self._reader = asyncio.create_task(self._read())
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _active_port(self) -> tuple[int, str]:
        marker = self.profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            try:
                port, path = marker.read_text().split("\n")[:2]
                return int(port), path.strip()
            except (FileNotFoundError, ValueError):
                await asyncio.sleep(0.05)
        raise TimeoutError("chromium did not open its debugging port")

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                page = self._pages.get(data.get("sessionId", ""))
                if page is not None:
                    page.on_event(data.get("method", ""), data.get("params", {}))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RuntimeError("chromium closed the connection"))

    async def call(self, method: str, session: str | None = None,
                   **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        assert self._ws is not None
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self._ws.send_json(message)
        return await asyncio.wait_for(fut, self.timeout)

    async def page(self) -> Page:
        """A new tab with Page, Runtime, Log and Network events on."""
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"],
                                   flatten=True)
        page = Page(self, attached["sessionId"])
        self._pages[page.session] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.call(f"{domain}.enable")
        return page

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
        if self._session is not None:
            await self._session.close()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            # Its own process group (start_new_session): the renderers go with it.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 10)
        shutil.rmtree(self.profile, ignore_errors=True)
