"""Keep TensorFlow's start-up noise (CUDA probing, oneDNN and CPU-feature notices) away from CLI users.

TF_CPP_MIN_LOG_LEVEL hides TensorFlow's C++ INFO and WARNING lines once its logging is set up, but the
lines written while its libraries load come before that (abseil prints everything until
`absl::InitializeLog()`), and a CPU-only machine logs a failed `cuInit` as an error. So, besides the
environment variables, the command's stderr (file descriptor 2, which the C++ code writes to) goes
through a filter that drops exactly those known lines and passes everything else on at once, so
errors, tracebacks and progress bars stay visible.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings

# Whole lines (without the newline) that are start-up noise. C++ lines look like
# "I0000 00:00:1796195280.723990   11334 port.cc:153] message".
NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] .*"  # INFO / WARNING lines logged before logging is set up
    r"|E\d{4} [\d:.]+\s+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit.*"  # a CPU-only machine probing CUDA
    r"|To enable the following instructions: .* rebuild TensorFlow .*"  # 2nd line of the CPU-feature notice
)
_NOISE_STARTS = ("WARNING: All log", "To enable the following")


def _may_become_noise(partial: bytes) -> bool:
    """Whether a line whose end has not arrived yet could still turn out to be a NOISE line."""
    text = partial.decode("utf-8", "replace")
    if text[:1] in ("I", "W", "E") and (len(text) == 1 or text[1].isdigit()):
        return True
    return any(s.startswith(text) or text.startswith(s) for s in _NOISE_STARTS)


class Quiet:
    """Context manager: hides TensorFlow's start-up noise from the command run inside it.

    Sets TF_CPP_MIN_LOG_LEVEL=2 (unless the user set it) and quiets TensorFlow's Python logger and
    library warnings, and routes file descriptor 2 through a thread that drops NOISE lines. `release()`
    undoes it (for `--verbose` found after the command name) while TensorFlow is not imported yet.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._thread: threading.Thread | None = None
        self._passthrough = False
        self._set_env = False
        self._warning_filters: list | None = None
        self._tf_level = logging.NOTSET

    def __enter__(self) -> Quiet:
        self._set_env = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # 2: C++ errors stay visible
        tf_logger = logging.getLogger("tensorflow")
        self._tf_level = tf_logger.level
        tf_logger.setLevel(logging.ERROR)
        self._warning_filters = list(warnings.filters)
        for module in ("tensorflow", "keras", "tf_keras", "google.protobuf"):
            warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="mtv-stderr", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Lets everything through from now on; the environment is restored if TensorFlow is not loaded."""
        self._passthrough = True
        if self._set_env and "tensorflow" not in sys.modules:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        logging.getLogger("tensorflow").setLevel(self._tf_level)
        warnings.filters[:] = self._warning_filters

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the pump sees end-of-file
        self._thread.join(timeout=5)
        os.close(self._saved)

    def _forward(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._saved, data):]

    def _keep(self, line: bytes) -> bool:
        return self._passthrough or not NOISE.fullmatch(line.rstrip(b"\r").decode("utf-8", "replace"))

    def _pump(self, read_end: int) -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = [line + b"\n" for line in lines if self._keep(line)]
                if pending and (self._passthrough or not _may_become_noise(pending)):
                    kept.append(pending)  # a progress bar (\r, no newline) is shown as it is drawn
                    pending = b""
                self._forward(b"".join(kept))
        if pending and self._keep(pending):
            self._forward(pending)
