"""TensorFlow on first use. The model path (build, convert, load, save, predict) runs on any Keras backend without
TensorFlow; the features that need it (SavedModel/hub export, the tf.data pipeline, tf.distribute training)
import it through here, so a missing TensorFlow is reported with the feature that needed it."""

from __future__ import annotations

import os
import sys

from mtv.errors import MissingDependencyError

TF_REQUIREMENT = "tensorflow==2.21.*"
_TF_MODULES = ("tensorflow", "tensorflow_hub", "tf_keras")


def is_tensorflow_missing(error: BaseException) -> bool:
    """Whether `error` is the ImportError of a TensorFlow package that is not installed."""
    name = getattr(error, "name", None) or ""
    return isinstance(error, ModuleNotFoundError) and name.split(".")[0] in _TF_MODULES


def missing_tensorflow(feature: str) -> MissingDependencyError:
    """The error for `feature` when TensorFlow is not installed: what needs it and how to get it."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return MissingDependencyError(
        f"{feature} needs TensorFlow, which is not installed here (Keras backend: {backend!r}). Building, "
        "converting, loading, saving and predicting run without it; install it for this feature with "
        f"`pip install '{TF_REQUIREMENT}'`")


def require_tensorflow(feature: str):
    """The `tensorflow` module, imported now; a MissingDependencyError naming `feature` when it is not installed."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        import tensorflow as tf
    except ModuleNotFoundError as err:
        if is_tensorflow_missing(err):
            raise missing_tensorflow(feature) from None
        raise
    return tf


def tensorflow_loaded():
    """The `tensorflow` module if something already imported it, else None (never imports it)."""
    return sys.modules.get("tensorflow")


def is_tf_tensor(value) -> bool:
    """Whether `value` is a TensorFlow tensor or variable (eager or symbolic), without importing TensorFlow."""
    tf = tensorflow_loaded()
    return tf is not None and isinstance(value, (tf.Tensor, tf.Variable))


class LazyTensorFlow:
    """Stands for `tensorflow` in a module that uses it only inside functions: the first attribute read imports it
    (a MissingDependencyError naming the module's feature when it is not installed)."""

    __slots__ = ("_feature",)

    def __init__(self, feature: str):
        self._feature = feature

    def __getattr__(self, name: str):
        return getattr(require_tensorflow(self._feature), name)

    def __repr__(self) -> str:
        return f"<TensorFlow, imported on first use by {self._feature}>"
