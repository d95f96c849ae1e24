"""Initialise an M&M model from an RGB MTV: the RGB stream by Flax name, the flow and audio streams
from the same weights with their input embeddings adapted.

Rules (docs/multimodal.md has the reasons):
* Each target view takes the weights of one source view of the same ViT size (hidden, heads, mlp,
  layers): an RGB view its own index when that fits, any other view the source view of its size
  (closest temporal tubelet first). Its blocks, CLS tokens, positional table and, with merge_axis
  'time', its `global_encoder_linear_view{i}` come from that view.
* Tubelet kernels: resized over (t, h, w) by linear interpolation when the patch differs (Scenic's
  Kinetics -> Epic rule); flow: the mean over the RGB input channels, repeated for each flow channel.
* Audio 2-D kernel: the tubelet kernel summed over time (a static input keeps its response), the mean
  over input channels (as AST), then its (h, w) resized linearly to the (time, frequency) patch.
* CLS tokens are interpolated along time; positional tables keep the CLS row and resize the patch
  grid (audio: the grid's rows are averaged, then resized to the frequency patches).
* Cross-view attention and bottleneck weights are copied only between RGB views that keep their
  index; any link to a new stream keeps its initialisation (zero output kernel: the streams start
  independent). Global encoder weights are copied where the shapes agree (its positional table is
  interpolated along tokens); with merge 'channel' and extra streams its width differs, so it keeps
  its initialisation. `output_projection` only with `restore_output_projection`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from mtv.errors import CheckpointError

_EMBEDDING = re.compile(r"^embedding_view(\d+)/kernel$")
_PLAIN = re.compile(r"^MultiviewEncoder/encoderblock_(\d+)_view(\d+)/(.+)$")
_FUSED = re.compile(r"^MultiviewEncoder/cross_view_encoderblock_(\d+)/(msa_ln|msa|mlp_ln|mlp)_view(\d+)/(.+)$")
_CROSS = re.compile(r"^MultiviewEncoder/cross_view_encoderblock_(\d+)/cross_attention(?:_ln)?_view(\d+)(?:_(\d+))?/")
_PER_VIEW = re.compile(r"^(?:embedding_view|cls_view|MultiviewEncoder/posembed_input_view|global_encoder_linear_view)"
                       r"(\d+)(?:/|$)")
_BOTTLENECK_LINEAR = re.compile(r"^MultiviewEncoder/bottleneck_linear_\d+_view(\d+)/")
# Plain ViT block part <-> its name inside a fused cross-view block.
_FUSED_PART = {"LayerNorm_0": "msa_ln", "MultiHeadDotProductAttention_0": "msa", "LayerNorm_1": "mlp_ln",
               "MlpBlock_0": "mlp"}
_PLAIN_PART = {v: k for k, v in _FUSED_PART.items()}


def zoom_linear(array: np.ndarray, shape: tuple) -> np.ndarray:
    """Linear resize axis by axis, end points kept (scipy.ndimage.zoom(order=1) as Scenic uses it).

    A target length of 1 takes the mean along that axis; a source length of 1 is repeated.
    """
    out = np.asarray(array, np.float64)
    for axis, new in enumerate(shape):
        old = out.shape[axis]
        if new == old:
            continue
        if new == 1:
            out = out.mean(axis=axis, keepdims=True)
            continue
        if old == 1:
            out = np.repeat(out, new, axis=axis)
            continue
        pos = np.arange(new) * (old - 1) / (new - 1)
        lo = np.minimum(np.floor(pos).astype(int), old - 2)
        frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, lo + 1, axis=axis) * frac
    return out.astype(np.asarray(array).dtype)


def _source_params(source: Any) -> tuple[dict, dict | None]:
    """(flat numpy params, geometry or None) of an MTV model or any checkpoint `load_flat_params` reads."""
    if hasattr(source, "flax_params"):
        flat = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in source.flax_params().items()}
        return flat, getattr(source, "geometry", None)
    from mtv.io.scenic import load_flat_params

    return load_flat_params(source), None


def _source_views(flat: Mapping) -> dict[int, dict]:
    """Source view index -> its size (hidden, heads, mlp, layers) and tubelet, read off the param names."""
    views = {}
    for key, value in flat.items():
        m = _EMBEDDING.match(key)
        if m and np.ndim(value) == 5:
            views[int(m[1])] = {"tubelet": tuple(np.shape(value)[:3]), "hidden": int(np.shape(value)[-1])}
    for i, v in views.items():
        layers, heads, mlp = [], None, None
        for key, value in flat.items():
            plain, fused = _PLAIN.match(key), _FUSED.match(key)
            if plain and int(plain[2]) == i:
                layer, rest = int(plain[1]), plain[3]
            elif fused and int(fused[3]) == i:
                layer, rest = int(fused[1]), f"{_PLAIN_PART[fused[2]]}/{fused[4]}"
            else:
                continue
            layers.append(layer)
            if rest == "MultiHeadDotProductAttention_0/query/kernel":
                heads = int(np.shape(value)[1])
            elif rest == "MlpBlock_0/Dense_0/kernel":
                mlp = int(np.shape(value)[1])
        v["size"] = (v["hidden"], heads, mlp, max(layers) + 1 if layers else 0)
    if not views:
        raise CheckpointError("the source has no 'embedding_view{i}/kernel' tubelet kernels: not an MTV checkpoint")
    return views


def _size(view: Mapping) -> tuple:
    return (view["hidden_size"], view["num_heads"], view["mlp_dim"], view["num_layers"])


def match_views(spec: Mapping, source_views: Mapping[int, dict]) -> dict[int, int]:
    """Target view index -> source view index (same ViT size; RGB keeps its index where it can)."""
    mapping = {}
    for i, view in enumerate(spec["views"]):
        candidates = [s for s, sv in source_views.items() if sv["size"] == _size(view)]
        if not candidates:
            sizes = {s: sv["size"] for s, sv in source_views.items()}
            raise CheckpointError(f"view {i} ({view['modality']}, hidden/heads/mlp/layers {_size(view)}) has no "
                                  f"source view of the same size; the source views are {sizes}")
        if view["modality"] == "rgb" and i in candidates:
            mapping[i] = i
        elif view["modality"] == "audio":
            mapping[i] = candidates[0]
        else:
            pt = view["patch_size"][2]
            mapping[i] = min(candidates, key=lambda s, pt=pt: abs(source_views[s]["tubelet"][0] - pt))
    return mapping


def _grid(n_tokens: int, cls: int, key: str, geometry: Mapping | None, view: int) -> tuple[int, int]:
    if geometry is not None:
        return tuple(geometry["views"][view]["grid"])
    side = math.isqrt(n_tokens - cls)
    if side * side != n_tokens - cls:
        raise CheckpointError(f"cannot tell the patch grid of '{key}' ({n_tokens - cls} patches, not a square); "
                              "pass the MTV model instead of its checkpoint")
    return side, side


class _Initialiser:
    """One pass over the target's Flax table; each weight is copied, adapted, or left as initialised."""

    def __init__(self, model, flat, geometry, restore_output_projection):
        self.model, self.spec, self.flat, self.src_geo = model, model.spec, flat, geometry
        self.cls = 1 if self.spec["classifier"] == "token" else 0
        self.restore_head = restore_output_projection
        self.src_views = _source_views(flat)
        if ("cls_view0" in flat) != bool(self.cls):
            raise CheckpointError(f"the model's classifier is {self.spec['classifier']!r} but the source "
                                  f"{'has' if 'cls_view0' in flat else 'has no'} per-view CLS tokens; both must "
                                  "use 'token' or neither")
        self.view_map = match_views(self.spec, self.src_views)
        norm = flat.get("global_encoder/encoder_norm/scale")
        # The global encoder is taken whole or not at all: its width is the sum of the view widths.
        self.global_same = norm is not None and int(np.shape(norm)[0]) == model.backbone.output_width
        self.same = {i for i, s in self.view_map.items() if i == s and self.spec["views"][i]["modality"] == "rgb"}
        self.report = {"view_map": dict(self.view_map), "copied": [], "adapted": {}, "initialised": []}

    def source_key(self, key: str) -> str | None:
        """The source name holding `key`'s weights, or None."""
        if key.startswith("output_projection/"):
            return key if self.restore_head else None
        if key.startswith("global_encoder/") or key == "cls_global":
            return key if self.global_same else None
        m = _PLAIN.match(key) or _FUSED.match(key)
        if m:
            if m.re is _PLAIN:
                layer, view, rest = int(m[1]), int(m[2]), m[3]
            else:
                layer, view, rest = int(m[1]), int(m[3]), f"{_PLAIN_PART[m[2]]}/{m[4]}"
            src = self.view_map[view]
            part, tail = rest.split("/", 1)
            plain = f"MultiviewEncoder/encoderblock_{layer}_view{src}/{rest}"
            fused = f"MultiviewEncoder/cross_view_encoderblock_{layer}/{_FUSED_PART[part]}_view{src}/{tail}"
            return plain if plain in self.flat else fused if fused in self.flat else None
        m = _CROSS.match(key)
        if m:
            views = {int(m[2])} | ({int(m[3])} if m[3] is not None else set())
            return key if views <= self.same else None
        m = _BOTTLENECK_LINEAR.match(key)
        if m:
            return key if int(m[1]) in self.same else None
        m = _PER_VIEW.match(key)
        if m:
            view = int(m[1])
            return key.replace(f"view{view}", f"view{self.view_map[view]}", 1)
        return key

    def always_adapted(self, key: str) -> bool:
        """Audio kernels and tables are re-laid out even when their shapes happen to match."""
        m = _PER_VIEW.match(key)
        return bool(m) and self.spec["views"][int(m[1])]["modality"] == "audio" and (
            key.endswith("/kernel") and key.startswith("embedding_view") or "posembed_input" in key)

    def adapt(self, key: str, src_key: str, value: np.ndarray, shape: tuple) -> tuple[np.ndarray | None, str]:
        """`value` (the source weight) made to `shape`, with a note; None where no rule applies."""
        m = _PER_VIEW.match(key)
        view = int(m[1]) if m else None
        if key.startswith("embedding_view") and key.endswith("/kernel"):
            return self.embedding(view, value, shape)
        if key.startswith("cls_view"):
            return zoom_linear(value, shape), f"interpolated along time {value.shape[1]} -> {shape[1]}"
        if key.startswith("MultiviewEncoder/posembed_input_view") and value.shape[-1] == shape[-1]:
            return self.posembed(key, view, value, shape)
        if key == "global_encoder/posembed_input/pos_embedding" and value.shape[-1] == shape[-1]:
            head, rest = value[:, :self.cls], value[:, self.cls:]
            rest = zoom_linear(rest, (1, shape[1] - self.cls, shape[2]))
            return np.concatenate([head, rest], axis=1), f"interpolated along tokens {value.shape[1]} -> {shape[1]}"
        return None, ""

    def embedding(self, view: int, kernel: np.ndarray, shape: tuple) -> tuple[np.ndarray, str]:
        notes = []
        if self.spec["views"][view]["modality"] == "audio":
            kernel = kernel.sum(axis=0)
            kernel = np.repeat(kernel.mean(axis=2, keepdims=True), shape[2], axis=2)
            notes.append("summed over time, mean over input channels")
            if kernel.shape[:2] != tuple(shape[:2]):
                kernel = zoom_linear(kernel, shape)
                notes.append(f"(h, w) resized to the (time, frequency) patch {tuple(shape[:2])}")
            return kernel, "; ".join(notes)
        if kernel.shape[:3] != tuple(shape[:3]):
            kernel = zoom_linear(kernel, tuple(shape[:3]) + kernel.shape[3:])
            notes.append(f"tubelet resized to {tuple(shape[:3])}")
        if kernel.shape[3] != shape[3]:
            notes.append(f"mean over the {kernel.shape[3]} input channels, repeated {shape[3]} times")
            kernel = np.repeat(kernel.mean(axis=3, keepdims=True), shape[3], axis=3)
        return kernel, "; ".join(notes)

    def posembed(self, key: str, view: int, table: np.ndarray, shape: tuple) -> tuple[np.ndarray, str]:
        src = self.view_map[view]
        c = table.shape[-1]
        gh, gw = _grid(table.shape[1], self.cls, key, self.src_geo, src)
        grid = table[0, self.cls:].reshape(gh, gw, c)
        th, tw = self.model.geometry["views"][view]["grid"]
        if self.spec["views"][view]["modality"] == "audio":
            grid = zoom_linear(grid.mean(axis=0, keepdims=True), (1, tw, c))
            note = f"grid {gh}x{gw}: rows averaged, resized to {tw} frequency patches"
        else:
            grid = zoom_linear(grid, (th, tw, c))
            note = f"grid resized {gh}x{gw} -> {th}x{tw}"
        out = np.concatenate([table[:, :self.cls], grid.reshape(1, th * tw, c)], axis=1)
        return out, note

    def run(self) -> dict:
        for key, var in self.model.flax_params().items():
            shape = tuple(var.shape)
            src_key = self.source_key(key)
            if src_key is None or src_key not in self.flat:
                self.report["initialised"].append(key)
                continue
            value = np.asarray(self.flat[src_key])
            if value.shape == shape and not self.always_adapted(key):
                var.assign(value.astype(var.dtype))
                self.report["copied"].append(key)
                continue
            new, note = self.adapt(key, src_key, value, shape)
            if new is None:
                self.report["initialised"].append(key)
                continue
            if tuple(new.shape) != shape:
                raise CheckpointError(f"adapting '{src_key}' {value.shape} to '{key}' gave {new.shape}, "
                                      f"expected {shape}")
            var.assign(new.astype(var.dtype))
            src = f"from '{src_key}'" if src_key != key else "same name"
            self.report["adapted"][key] = f"{note} ({src})"
        return self.report


def init_from_mtv(model, source: Any, *, restore_output_projection: bool = False) -> dict:
    """Writes an RGB MTV's weights (a keras MTV, or a checkpoint / .npz / mapping of Flax params) into every
    stream of the M&M `model`. Returns {'view_map', 'copied', 'adapted' {name: how}, 'initialised'}.
    """
    flat, geometry = _source_params(source)
    report = _Initialiser(model, flat, geometry, restore_output_projection).run()
    logging.info("M&M init from MTV: %d weights copied, %d adapted, %d left as initialised (view map %s)",
                 len(report["copied"]), len(report["adapted"]), len(report["initialised"]), report["view_map"])
    return report
