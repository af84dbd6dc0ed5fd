"""A test helper: `cerberus-search proxy` started on a free loopback port, for the tests and for
benchmarks/proxy_throughput.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(storage: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """``cerberus-search proxy`` in front of ``storage`` on ``port`` (default: a free loopback
    port), once it answers."""
    port = port or free_port()
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cerberus", "proxy", "--storage", storage, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited: {proc.stderr.read()[-500:]}")  # type: ignore[union-attr]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"grpc://127.0.0.1:{port}"
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the proxy did not listen within 60 s")
