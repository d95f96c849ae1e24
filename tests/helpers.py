"""Small shared helpers for tests: the cva_2view fixture model and a local HTTP server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
import time
from pathlib import Path

import numpy as np

from tests.conftest import SHARED, require_shared

FIXTURE = SHARED / "fixtures" / "scenic_mtv" / "cva_2view"


def fixture_model():
    """The cva_2view Scenic test vector loaded into a Keras MTV (8x32x32 input, 5 classes); skips without it."""
    import mtv

    require_shared()
    return mtv.from_scenic(FIXTURE / "config.json", FIXTURE / "params.npz")


def fixture_input() -> np.ndarray:
    """The fixture's input clips; skips without ../shared."""
    require_shared()
    return np.load(FIXTURE / "input.npy")


def fixture_logits() -> np.ndarray:
    """Scenic's logits for fixture_input(); skips without ../shared."""
    require_shared()
    return np.load(FIXTURE / "logits.npy")


@contextlib.contextmanager
def serve_directory(root: Path):
    """Serves `root` over HTTP on 127.0.0.1 (random port) for the duration of the block; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class RouteServer:
    """HTTP/1.0 server on 127.0.0.1 for download tests: `routes[path]` is a dict with the `body` (bytes) and,
    optionally, `cut` (send only body[:cut]), `length` (False: no Content-Length; an int: that, lying, value),
    `pieces` (chunks the body is sent in) and `delay` (seconds after each chunk). `hits` counts requests."""

    def __init__(self):
        self.routes: dict[str, dict] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "no such file")
                    return
                body = route["body"][: route.get("cut")]
                self.send_response(200)
                length = route.get("length", True)
                if length is not False:
                    self.send_header("Content-Length", str(len(body) if length is True else int(length)))
                self.end_headers()
                step = max(-(-len(body) // route.get("pieces", 1)), 1)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
                    time.sleep(route.get("delay", 0.0))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.running = True

    def url(self, path: str) -> str:
        """The URL of `path` on this server."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        """Shuts the server down (again: no-op)."""
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False
