"""What a stream gets when its modality is missing: one value, shared by modality dropout in training and by
evaluation, prediction and serving when a video has no audio track or no flow.

A missing stream is fed as zeros of the stream's input shape. For RGB and flow, inputs in [-1, 1], zero is mid
grey and "no motion"; for audio, a log-mel of 0 is not silence (silence is log(log_offset), about -13.8), so a
model only handles a missing stream well if it was trained with modality dropout, which feeds these same zeros.
"""

from __future__ import annotations

import numpy as np

MISSING_VALUE = 0.0


def missing_input(shape, dtype: str = "float32") -> np.ndarray:
    """The input that stands for a missing modality: an array of `MISSING_VALUE` of `shape`."""
    return np.full(tuple(shape), MISSING_VALUE, dtype=dtype)
