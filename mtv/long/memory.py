"""The fixed-size token memory of streaming recognition: weighted K-means over the memory and a new clip's tokens.

Definition (Streaming DVC, Zhou et al. CVPR 2024, the `kmeans` memory of Scenic's projects/streaming_dvc):
the memory is K tokens `m_k` [B, K, D] with weights `w_k` [B, K], the number of clip tokens each has absorbed.
A new clip brings N tokens `x_n` [B, N, D] of weight 1 each. The K + N weighted points
`p = [m_1..m_K, x_1..x_N]`, `v = [w_1..w_K, 1..1]` are clustered into K centres:

  init        c_k = m_k (the current memory tokens, as Scenic)
  iterate     `num_iterations` times (fixed; default 2, Scenic's `kmeans_num_iters` default):
                a(i)  = argmin_k ||p_i - c_k||^2          (ties: the lowest k)
                W_k   = sum_{i: a(i)=k} v_i
                c_k   = sum_{i: a(i)=k} v_i p_i / W_k     when W_k > 0, else c_k is kept
  result      memory c [B, K, D], weights W [B, K] (from the last assignment; sum W = sum w + N)

An *empty* memory (all weights 0, e.g. the zeros of `empty_state`) is first seeded from the clip: slot k
takes token floor(k N / K) with weight 0, so the first update clusters the clip's own tokens (a zero-weight
point moves no centre). Every size is static and the loop count is a constant, so the layer traces into one
graph, exports, and runs on every Keras backend. Gradients flow through the centres (weighted means), not
through the assignment (an argmin).
"""

from __future__ import annotations

import keras
from keras import ops

from mtv.errors import ConfigError, ShapeError


def seed_indices(num_tokens: int, memory_size: int) -> list[int]:
    """The clip tokens an empty memory's K slots start from: floor(k N / K), evenly spread (repeats when K > N)."""
    return [k * num_tokens // memory_size for k in range(memory_size)]


def seed_memory(tokens, memory_size: int):
    """[B, K, D] centres picked from the clip's tokens [B, N, D] by `seed_indices`."""
    return ops.take(tokens, seed_indices(int(tokens.shape[1]), memory_size), axis=1)


def check_memory_shapes(memory_shape, weights_shape, tokens_shape) -> None:
    """ShapeError unless memory [B, K, D], weights [B, K] and tokens [B, N, D] agree."""
    memory_shape, weights_shape, tokens_shape = tuple(memory_shape), tuple(weights_shape), tuple(tokens_shape)
    if len(memory_shape) != 3 or len(tokens_shape) != 3 or len(weights_shape) != 2:
        raise ShapeError(f"the memory update takes memory [B, K, D], weights [B, K] and tokens [B, N, D]; got "
                         f"memory {memory_shape}, weights {weights_shape}, tokens {tokens_shape}")
    if memory_shape[2] != tokens_shape[2]:
        raise ShapeError(f"memory tokens have width {memory_shape[2]} but the clip's tokens have {tokens_shape[2]} "
                         f"(memory {memory_shape}, tokens {tokens_shape})")
    if weights_shape[1] != memory_shape[1]:
        raise ShapeError(f"memory weights {weights_shape} do not match the memory's {memory_shape[1]} tokens "
                         f"(memory {memory_shape})")
    if memory_shape[1] is None or tokens_shape[1] is None:
        raise ShapeError(f"the memory size K and the clip's token count N must be static; got memory "
                         f"{memory_shape}, tokens {tokens_shape}")


@keras.saving.register_keras_serializable(package="mtv")
class KMeansMemory(keras.layers.Layer):
    """One memory update: (memory [B, K, D], weights [B, K], tokens [B, N, D]) -> (memory, weights); see the module."""

    def __init__(self, num_iterations: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
            raise ConfigError(f"KMeansMemory num_iterations must be a positive integer, got {num_iterations!r}")
        self.num_iterations = num_iterations

    def call(self, memory, weights, tokens):
        check_memory_shapes(memory.shape, weights.shape, tokens.shape)
        size = int(memory.shape[1])
        memory = ops.cast(memory, tokens.dtype)
        weights = ops.cast(weights, tokens.dtype)
        empty = ops.sum(weights, axis=1, keepdims=True) <= 0  # [B, 1]
        centres = ops.where(empty[:, :, None], seed_memory(tokens, size), memory)
        points = ops.concatenate([centres, tokens], axis=1)  # [B, K + N, D]
        point_weights = ops.concatenate([weights, ops.ones_like(tokens[:, :, 0])], axis=1)  # [B, K + N]
        weighted_points = points * point_weights[:, :, None]
        point_norms = ops.sum(ops.square(points), axis=-1)  # [B, K + N]
        counts = None
        for _ in range(self.num_iterations):
            # ||p - c||^2 = |p|^2 - 2 p.c + |c|^2: no [B, K + N, K, D] difference tensor.
            distances = (point_norms[:, :, None] - 2.0 * ops.einsum("bpd,bkd->bpk", points, centres)
                         + ops.sum(ops.square(centres), axis=-1)[:, None, :])
            assign = ops.one_hot(ops.argmin(distances, axis=-1), size, dtype=tokens.dtype)  # [B, K + N, K]
            counts = ops.einsum("bpk,bp->bk", assign, point_weights)
            sums = ops.einsum("bpk,bpd->bkd", assign, weighted_points)
            # A centre that absorbed no weight keeps its place (as Scenic's empty clusters).
            means = sums / ops.maximum(counts, 1e-12)[:, :, None]
            centres = ops.where(counts[:, :, None] > 0, means, centres)
        return centres, counts

    def compute_output_shape(self, memory_shape, weights_shape, tokens_shape):
        return tuple(memory_shape), tuple(weights_shape)

    def get_config(self):
        return {**super().get_config(), "num_iterations": self.num_iterations}
