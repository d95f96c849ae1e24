"""Small shared helpers for tests: the cva_2view fixture model and a local HTTP server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
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
