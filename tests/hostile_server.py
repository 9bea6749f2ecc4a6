"""A hostile MLflow tracking server: answers the REST calls `load_policy` makes, then serves
artifacts meant to escape the download folder, never end, or never stop growing.

    python -m tests.hostile_server PORT MODE [VICTIM_DIR [ARTIFACT_URI]]

MODE:
    data-relative   the MLmodel's `data:` is ../escaped (outside the download folder)
    data-absolute   the MLmodel's `data:` is VICTIM_DIR (an absolute path)
    listing-dotdot  the SavedModel listing nests folders named '..' four deep, then a file
    trickle         MLmodel arrives one byte per second
    oversized       model.onnx is endless, without a Content-Length
    oversized-declared  model.onnx declares 3 GB
    policy-list     policy.json is a JSON list
    policy-types    policy.json has fields of the wrong types
    store           the version's files are at ARTIFACT_URI, not behind the proxy (a server
                    started with --no-serve-artifacts: the client reads the store itself)
    s3-MODE         the files are at s3://bucket/model, this server being the S3 endpoint,
                    and served as in MODE (s3-trickle, s3-oversized, ...)
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ROOT = "adv/1/artifacts"
VERSION = {"name": "adv", "version": "1", "creation_timestamp": 0, "tags": [], "aliases": ["best"]}


def mlmodel(data: str) -> bytes:
    return f"flavors:\n  rllib_mlflow:\n    data: {data}\n".encode()


class Handler(BaseHTTPRequestHandler):
    mode = ""
    victim = ""
    artifact_uri = ""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        url = urlparse(self.path)
        if url.path.endswith("/registered-models/alias") or url.path.endswith(
            "/model-versions/get"
        ):
            return self._json({"model_version": VERSION})
        if url.path.endswith("/model-versions/get-download-uri"):
            if self.mode.startswith("s3-"):
                return self._json({"artifact_uri": "s3://bucket/model"})
            return self._json({"artifact_uri": self.artifact_uri or f"mlflow-artifacts:/{ROOT}"})
        if self.mode.startswith("s3-") and url.path.startswith("/bucket/model/"):
            return self._artifact(url.path[len("/bucket/model/") :], self.mode[3:])
        if url.path == "/api/2.0/mlflow-artifacts/artifacts":  # a listing
            return self._listing(parse_qs(url.query).get("path", [""])[0])
        prefix = f"/api/2.0/mlflow-artifacts/artifacts/{ROOT}/"
        if url.path.startswith(prefix):
            return self._artifact(url.path[len(prefix) :], self.mode)
        self.send_error(404)

    def _artifact(self, path: str, mode: str):
        if path == "MLmodel":
            data = {"data-relative": "../escaped", "data-absolute": self.victim}.get(mode, "data")
            if mode == "trickle":
                return self._trickle(mlmodel(data))
            return self._bytes(mlmodel(data))
        if path == "data/policy.json":
            policy = {"formats": ["saved_model"] if mode == "listing-dotdot" else ["onnx"]}
            if mode == "policy-list":
                return self._bytes(b"[1, 2, 3]")
            if mode == "policy-types":
                policy = {"formats": ["onnx"], "action_rule": 5, "input": "none"}
            return self._json(policy)
        if path.endswith("policy.json"):  # the data-* modes: write it wherever it lands
            return self._json({"formats": ["onnx"], "planted": True})
        if path == "data/model.onnx" and mode == "oversized":
            return self._endless()
        if path == "data/model.onnx" and mode == "oversized-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(3 * 10**9))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
            return None
        return self._bytes(b"planted")

    def _listing(self, path: str):
        if "saved_model" not in path or self.mode != "listing-dotdot":
            return self._json({"files": []})
        if path.count("/..") < 4:  # climb out of the download folder, one '..' at a time
            return self._json({"files": [{"path": f"{path}/..", "is_dir": True}]})
        return self._json({"files": [{"path": f"{path}/pwned", "is_dir": False}]})

    def _trickle(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + 10_000))
        self.end_headers()
        for byte in body + b"#" * 10_000:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(1.0)

    def _endless(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"\0" * (1 << 16)
        try:
            for _ in range(100_000):  # bounded: 6.5 GB at most, far past any limit
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, payload):
        return self._bytes(json.dumps(payload).encode())

    def _bytes(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    Handler.mode = mode
    Handler.victim = sys.argv[3] if len(sys.argv) > 3 else ""
    Handler.artifact_uri = sys.argv[4] if len(sys.argv) > 4 else ""
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
