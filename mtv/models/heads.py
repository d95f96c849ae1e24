"""Head surgery: a model with a new, freshly initialised classification head."""

from __future__ import annotations

import copy

from absl import logging


def replace_head(model, num_classes: int, *, class_splits=None, split_names=None):
    """Returns a copy of `model` with `num_classes` outputs; every weight but the head is kept."""
    from mtv.layers.common import skip_random_init
    from mtv.models.mtv_classifier import MTVClassifier
    from mtv.models.spec import head_fields

    spec = copy.deepcopy(model.spec)
    old = spec["num_classes"]
    spec.update(head_fields(num_classes, class_splits, split_names))  # validates num_classes (> 0)
    with skip_random_init():  # the backbone is copied below and the new head starts at zeros, as Scenic's
        new = MTVClassifier.from_spec(spec)
    src = model.backbone.flax_params()
    for key, var in new.backbone.flax_params().items():
        var.assign(src[key])
    logging.warning("replaced the %d-class head with a new %d-class head (zero-initialised as Scenic); "
                    "fine-tune before use", old, num_classes)
    return new
