"""The one exception module: every error the package raises on bad input."""


class MTVError(Exception):
    """Base class of every error raised by mtv on bad input."""


class ConfigError(MTVError, ValueError):
    """A config field is unknown, missing or has a value the model cannot use."""


class ShapeError(MTVError, ValueError):
    """An input array has the wrong rank, frames, size or channels."""


class CheckpointError(MTVError, ValueError):
    """A checkpoint file is unreadable, truncated, or does not match the model."""


class ZooError(MTVError, LookupError):
    """A model name, handle or registry entry cannot be resolved."""


class DownloadError(ZooError):
    """A download failed, was truncated, or did not match its sha256."""


class DataError(MTVError, ValueError):
    """A video, CSV, TFRecord or label cannot be used as training or evaluation data."""


class ResultsError(MTVError, ValueError):
    """A results file (scores per example) is malformed or inconsistent."""


class ExportError(MTVError, ValueError):
    """A SavedModel or hub tarball cannot be written or read."""


class MissingDependencyError(MTVError, ImportError):
    """A feature needs an optional package (TensorFlow, JAX) that is not installed; the message names both."""


class WriteError(MTVError, OSError):
    """An output file or directory cannot be written: missing parent, not a directory, no space, no permission."""
