"""Open a page in real headless Chromium and look at it as a person would, with nothing but
Debian's ``chromium``: a small Chrome DevTools Protocol client over ``--remote-debugging-pipe``
(JSON messages, each ending in a NUL byte, written to the browser's fd 3 and read from its
fd 4), so no websocket library or driver is needed.

As a script it makes the README's screenshot of a report::

    python tests/chromium.py studies/demo/report.html docs/report.png [--height 1500]
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def find() -> str | None:
    """The chromium binary, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab of a private headless Chromium, open on ``url``, with every console error,
    uncaught exception and browser-logged error of the page collected in :attr:`errors`, and
    the URL of every request the page made in :attr:`requests`."""

    def __init__(self, url: str, width: int = 1280, height: int = 900, timeout: float = 60) -> None:
        binary = find()
        if binary is None:
            raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._profile = tempfile.mkdtemp(prefix="cerberus-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def pipes_as_fd_3_and_4() -> None:
            # Copy above 10 first: either pipe end may itself be fd 3 or 4.
            r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
            os.dup2(r, 3)
            os.dup2(w, 4)

        flags = ["--headless", "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                 "--hide-scrollbars", f"--window-size={width},{height}"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        self._proc = subprocess.Popen([binary, *flags, "about:blank"], preexec_fn=pipes_as_fd_3_and_4,
                                      close_fds=False,  # only the inheritable fds 3 and 4 survive exec
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._inbox: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)
            self._loaded = False
            self.call("Page.navigate", {"url": url}, session=True)
            self._wait(lambda: self._loaded, "the page's load event")
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for m in messages:
                    self._inbox.put(json.loads(m))
        self._inbox.put(None)  # the browser closed its end

    def _pump(self, deadline: float) -> None:
        try:
            message = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return
        if message is None:
            raise RuntimeError(f"chromium exited: {self._proc.stderr.read().decode(errors='replace')[-2000:] if self._proc.poll() is not None else ''}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self._event(message["method"], message.get("params", {}))

    def _event(self, method: str, params: dict) -> None:
        if method == "Page.loadEventFired":
            self._loaded = True
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"log ({params['entry']['source']}): {params['entry']['text']}")

    def _wait(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium: no {what} within {self.timeout:.0f} s")
            self._pump(deadline)

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """Send one DevTools command (to the page with ``session``) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        number = self._next_id
        self._wait(lambda: number in self._replies, f"reply to {method}")
        reply = self._replies.pop(number)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        """A PNG of the viewport, or of the whole page with ``full_page``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("({w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight})")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["w"], "height": size["h"], "scale": 1})
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params, session=True)["data"]))

    def close(self) -> None:
        try:
            os.close(self._to_browser)  # closing the pipe asks Chromium to quit
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Screenshot an HTML file in headless Chromium.")
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    with Page(args.html.resolve().as_uri(), args.width, args.height) as page:
        time.sleep(1)  # plotly's transitions settle
        page.screenshot(args.png)
        if page.errors:
            raise SystemExit("\n".join(page.errors))
