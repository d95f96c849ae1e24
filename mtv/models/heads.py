"""Head surgery: a model with a new, freshly initialised classification head."""

from __future__ import annotations

import copy

from absl import logging


def replace_head(model, num_classes: int, *, class_splits=None, split_names=None):
    """Returns a copy of `model` with `num_classes` outputs; every weight but the head is kept."""
    spec = copy.deepcopy(model.spec)
    old = spec["num_classes"]
    spec["num_classes"] = int(num_classes)
    spec["class_splits"] = list(class_splits) if class_splits else None
    spec["split_names"] = list(split_names) if split_names else None
    new = type(model)(spec)
    head = "output_projection/"
    src = model.flax_params()
    for key, var in new.flax_params().items():
        if not key.startswith(head):
            var.assign(src[key])
    logging.warning("replaced the %d-class head with a new %d-class head (zero-initialised as Scenic); "
                    "fine-tune before use", old, num_classes)
    return new
