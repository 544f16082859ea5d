"""The readiness check against a scripted TorchServe: each way a server can be not ready yet, named.

The real server's case (a restarted worker still loading while /ping says Healthy) is in
tests/integration/test_faults.py.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from client import readiness
from client.server_files import SERVING_CONFIG
from devtools.ports import free_port

MODEL = "lite-embed"


class FakeTorchServe(http.server.ThreadingHTTPServer):
    """Management and inference API on one loopback port, answering as TorchServe 0.12 does."""

    def __init__(self, port: int):
        self.workers, self.predict_status, self.seen = ["READY"], 200, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                outer.seen.append(("GET", self.path, self.headers["Authorization"], None))
                if self.path == "/models":
                    self.answer(200, {"models": [{"modelName": MODEL, "modelUrl": f"{MODEL}.mar"}]})
                elif self.path == f"/models/{MODEL}":
                    workers = [{"id": str(9000 + i), "status": s} for i, s in enumerate(outer.workers)]
                    self.answer(200, [{"modelName": MODEL, "minWorkers": 1, "workers": workers}])
                else:
                    self.answer(404, {"code": 404, "message": "Model not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append(("POST", self.path, self.headers["Authorization"], self.headers["Content-Type"]))
                assert body == readiness.probe_image()
                self.answer(outer.predict_status, {"embedding": [0.1, 0.2]} if outer.predict_status == 200 else {})

        super().__init__(("127.0.0.1", port), Handler)


@pytest.fixture
def served(tmp_path: Path):
    """A folder as serve.sh leaves it (keys, addresses), and the fake server those addresses name."""
    port = free_port()
    (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "i-key"}, "management": {"key": "m-key"}}))
    (tmp_path / SERVING_CONFIG).parent.mkdir()
    # a container's server listens on every interface; the check asks it on loopback
    (tmp_path / SERVING_CONFIG).write_text(
        f"inference_address=http://0.0.0.0:{port}\nmanagement_address=http://127.0.0.1:{port}\n"
    )
    server = FakeTorchServe(port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, server
    server.shutdown()
    server.server_close()


def test_ready_only_when_a_worker_is_ready_and_a_test_image_is_answered(served, capsys):
    folder, server = served
    assert readiness.main(["--dir", str(folder)]) == 0
    assert f"ready: {MODEL}: 1/1 workers READY" in capsys.readouterr().out
    # the management key asks, the inference key predicts, and the image goes as an image
    assert ("GET", f"/models/{MODEL}", "Bearer m-key", None) in server.seen
    assert ("POST", f"/predictions/{MODEL}", "Bearer i-key", "image/png") in server.seen


@pytest.mark.parametrize(
    ("workers", "predict_status", "reason"),
    [
        (["LOADING"], 200, "0 of 1 workers READY (LOADING)"),
        ([], 200, "0 of 1 workers READY (no worker yet)"),
        (["READY"], 503, "a test image got HTTP 503"),
    ],
)
def test_not_ready_says_why(served, capsys, workers, predict_status, reason):
    folder, server = served
    server.workers, server.predict_status = workers, predict_status
    assert readiness.main(["--dir", str(folder)]) == 1
    assert f"{MODEL}: {reason}" in capsys.readouterr().err


def test_a_loading_worker_is_not_sent_the_test_image(served):
    folder, server = served
    server.workers = ["LOADING"]
    readiness.main(["--dir", str(folder)])
    assert not [call for call in server.seen if call[0] == "POST"]


def test_a_model_that_is_not_registered_is_not_ready(served, capsys):
    folder, _ = served
    assert readiness.main(["--dir", str(folder), "--model", "other-embed"]) == 1
    assert f"other-embed not registered (registered: {MODEL})" in capsys.readouterr().err


def test_no_server_and_no_key_file_are_each_named(tmp_path, served, capsys):
    assert readiness.main(["--dir", str(tmp_path / "elsewhere")]) == 1
    assert "no key_file.json in" in capsys.readouterr().err
    folder, server = served
    server.shutdown()
    server.server_close()
    assert readiness.main(["--dir", str(folder), "--timeout", "2"]) == 1
    assert "nothing answers at 127.0.0.1:" in capsys.readouterr().err


def test_waiting_returns_as_soon_as_the_worker_is_ready(served, monkeypatch):
    folder, server = served
    server.workers = ["LOADING"]
    heard = []

    def say(line: str) -> None:
        heard.append(line)
        server.workers = ["READY"]  # the worker finishes loading after the first check

    monkeypatch.setattr(readiness, "POLL_S", 0.01)
    verdicts = readiness.wait(folder, [MODEL], seconds=30, timeout=5, say=say)
    assert verdicts is not None and all(v.ready for v in verdicts)
    assert heard == [f"not ready yet: {MODEL}: 0 of 1 workers READY (LOADING)"]
