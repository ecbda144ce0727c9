"""``notifyd.tools.worker_process``: launch, readiness, logs and stop, with stand-in workers."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from notifyd.tools.broker.base import free_port
from notifyd.tools.worker_process import WorkerSubprocess, ready_state, readyz

# A stand-in worker: says hello on stdout, then answers /readyz on NOTIFYD_WEB_PORT.
FAKE_WORKER = """
import http.server, json, os
print("fake worker up", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        raw = json.dumps({"ready": True}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["NOTIFYD_WEB_PORT"])), H).serve_forever()
"""


@dataclass(kw_only=True)
class Fake(WorkerSubprocess):
    code: str = FAKE_WORKER

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code]

    def start(self) -> Fake:
        if not self.web_port:
            self.web_port = free_port()
        self.launch({"NOTIFYD_WEB_PORT": str(self.web_port)})
        return self


@pytest.fixture()
def stub() -> Iterator[tuple[str, dict[str, object]]]:
    """An HTTP server whose /readyz answer the test sets: (status, body bytes)."""
    answer: dict[str, object] = {"status": 200, "body": b'{"ready": true}'}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            raw = answer["body"]
            assert isinstance(raw, bytes)
            self.send_response(int(str(answer["status"])))
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answer
    finally:
        server.shutdown()
        server.server_close()


def test_readyz_answers(stub: tuple[str, dict[str, object]]) -> None:
    url, answer = stub
    assert readyz(url)
    answer["body"] = b'{"ready": true, "partitions": [0, 2]}'
    assert ready_state(url) == {"ready": True, "partitions": [0, 2]}
    answer["body"] = b'{"ready": false}'
    assert ready_state(url) is None
    assert not readyz(url)
    answer.update(status=503, body=b'{"ready": true}')
    assert not readyz(url)
    answer.update(status=200, body=b"not json")
    assert not readyz(url)
    answer["body"] = b""
    assert not readyz(url)
    assert not readyz(f"http://127.0.0.1:{free_port()}", timeout=1)


def test_launch_wait_ready_and_stop(tmp_path: Path) -> None:
    w = Fake(datadir=tmp_path / "w")
    assert w.proc is None and w.pid is None and not w.alive() and w.log_tail() == ""
    w.stop()  # not started: nothing to do
    w.start()
    try:
        took = w.wait_ready(timeout=30, interval=0.05)
        assert 0 < took < 30 and w.alive() and w.pid == w.proc.pid  # type: ignore[union-attr]
        assert w.url == f"http://127.0.0.1:{w.web_port}"
        assert "fake worker up" in w.log_tail()
    finally:
        w.stop(10)
    assert not w.alive() and w.proc is not None and w.proc.returncode is not None
    # Launched again: the same log file, appended to.
    w.start()
    try:
        assert asyncio.run(w.wait_ready_async(timeout=30, interval=0.05)) > 0
        assert w.log_path.read_text().count("fake worker up") == 2
    finally:
        w.kill()
    assert not w.alive()


def test_wait_ready_worker_exits(tmp_path: Path) -> None:
    w = Fake(datadir=tmp_path, code="import sys; print('bad config'); sys.exit(3)").start()
    with pytest.raises(RuntimeError, match=r"worker exited:\n(.|\n)*bad config"):
        w.wait_ready(timeout=30, interval=0.05)
    with pytest.raises(RuntimeError, match="bad config"):
        asyncio.run(w.wait_ready_async(timeout=30, interval=0.05))


def test_wait_ready_timeout(tmp_path: Path) -> None:
    code = "import time; print('slow', flush=True); time.sleep(60)"
    w = Fake(datadir=tmp_path, code=code).start()
    try:
        with pytest.raises(TimeoutError, match=r"not ready in 0\.5s:\n(.|\n)*slow"):
            w.wait_ready(timeout=0.5, interval=0.05)
    finally:
        w.stop(10)
    assert not w.alive()
