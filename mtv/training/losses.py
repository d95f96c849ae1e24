"""Scenic's classification loss as a Keras training wrapper: softmax CE per head, label smoothing, masks.

Labels are one-hot (or mixup-mixed) float rows. A row of zeros means "no label for this head" (used by
co-finetuning, where a batch comes from one dataset and only that dataset's head is trained); such rows
add nothing. The loss of a batch is the mean over its labelled heads of each head's mean cross-entropy:
for Epic-Kitchens (verb + noun, both labelled) it is Scenic's mean of the two losses; for co-finetuning
it is the loss of the head whose dataset the batch came from.
"""

from __future__ import annotations

import keras
from keras import ops


def smooth(labels, smoothing: float):
    """Scenic's label smoothing, (1 - s) * y + s / C, applied to labelled rows only."""
    if not smoothing:
        return labels
    num_classes = labels.shape[-1]
    return (1.0 - smoothing) * labels + smoothing / num_classes


def head_cross_entropy(labels, logits, smoothing: float = 0.0):
    """(per-example CE [B], mask [B]) for one head; rows of zeros are masked out."""
    labels = ops.cast(labels, "float32")
    logits = ops.cast(logits, "float32")
    mask = ops.cast(ops.sum(labels, axis=-1) > 0, "float32")
    targets = smooth(labels, smoothing)
    ce = -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)
    return ce * mask, mask


def as_heads(value, names: list[str]) -> dict:
    """A tensor (single head) or a dict of tensors -> dict by head name."""
    if isinstance(value, dict):
        return value
    return {names[0]: value}


def _replicas() -> int:
    from mtv.training.backend import num_replicas

    return num_replicas()


class TrainingModel(keras.Model):
    """Wraps an MTV for `fit`: Scenic's loss (masked, smoothed, per-head) and per-head top-1 accuracy."""

    def __init__(self, model: keras.Model, heads: list[str], *, label_smoothing: float | None = None, **kwargs):
        super().__init__(name="training_model", **kwargs)
        self.model = model
        self.heads = list(heads)
        self.label_smoothing = float(label_smoothing or 0.0)
        self.accuracies = [keras.metrics.Mean(name=f"{h}_accuracy" if len(heads) > 1 else "accuracy")
                           for h in self.heads]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # The one private Keras hook left, on purpose: Keras 3's TF trainer (backend/tensorflow/trainer.py)
        # reduces a data batch across replicas to build the model symbolically, which fails under
        # MultiWorkerMirroredStrategy ("unsupported type PerReplica"; tests/test_distributed.py shows it
        # when this override is removed) and offers no public hook. Once the model has been called (see
        # `build_now`), no data is needed.
        if not all(layer.built for layer in self._flatten_layers()):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=None)

    def train_step(self, *args):  # TensorFlow's trainer passes (data,), JAX's (state, data)
        from mtv.training.backend import is_multi_worker

        logs = super().train_step(*args)
        if is_multi_worker(self):
            # Keras averages multi-worker logs with reduce(axis=0), which needs at least one dimension.
            logs = {k: ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def build_now(self) -> None:
        """Creates every variable by one call on zero inputs of the model's input spec (inside the strategy scope)."""
        zeros = {name: ops.zeros((1, *shape)) for name, shape in self.model.input_shapes.items()}
        # The same structure the datasets feed: a bare clip for a single input, else the dict.
        self(next(iter(zeros.values())) if len(zeros) == 1 else zeros, training=False)

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, logits = as_heads(y, self.heads), as_heads(y_pred, self.heads)
        total, active = 0.0, 0.0
        batch = ops.cast(ops.shape(logits[self.heads[0]])[0], "float32")
        for head in self.heads:
            ce, mask = head_cross_entropy(labels[head], logits[head], self.label_smoothing)
            total = total + ops.sum(ce) / ops.maximum(batch, 1.0)
            active = active + ops.cast(ops.sum(mask) > 0, "float32")
        loss = total / ops.maximum(active, 1.0)
        # As Keras' own losses: each replica returns its share, so the replica sum is the global mean.
        return loss / _replicas()

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, logits = as_heads(y, self.heads), as_heads(y_pred, self.heads)
        for head, metric in zip(self.heads, self.accuracies, strict=True):
            mask = ops.cast(ops.sum(labels[head], axis=-1) > 0, "float32")
            hit = ops.cast(ops.argmax(logits[head], axis=-1) == ops.argmax(labels[head], axis=-1), "float32")
            metric.update_state(hit, sample_weight=mask)
        return self.get_metrics_result()
