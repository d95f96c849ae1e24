"""An independent float64 NumPy reference of Scenic's MTV forward pass, for parity tests.

Written from /work/shared/MTV_REFERENCE.md alone (sections a and b), without looking at the Keras port,
so that agreement between the two means something. Params are flat '/'-joined Flax paths (no leading
'params/'); `config` is the Scenic config (a dict or ConfigDict with a `model` field). Inference only:
dropout and stochastic depth are inactive at eval, so they do not appear here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

LN_EPS = 1e-6
ENCODER = "MultiviewEncoder"


# ----------------------------------------------------------------------------------------------------
# Config helpers


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` for dicts and ConfigDicts, `default` when absent or None."""
    if cfg is None:
        return default
    try:
        value = cfg[key]
    except (KeyError, AttributeError, TypeError):
        return default
    return default if value is None else value


def _views(config: Any) -> list[dict]:
    """Per-view settings: width, heads, mlp, layers and the tubelet (pt, ph, pw)."""
    views = []
    for vc in _get(config["model"], "view_configs"):
        ph, pw, pt = (int(s) for s in vc["patches"]["size"])  # Scenic order (h, w, t)
        views.append(dict(c=int(vc["hidden_size"]), heads=int(vc["num_heads"]), mlp=int(vc["mlp_dim"]),
                          layers=int(vc["num_layers"]), pt=pt, ph=ph, pw=pw))
    return views


def _fusion(config: Any) -> tuple[str | None, list[int], bool, bool, int]:
    """(type, fusion layers, descending, use_query_config, bottleneck tokens)."""
    fcfg = _get(config["model"], "cross_view_fusion")
    ftype = _get(fcfg, "type")
    if ftype is None:
        return None, [], True, True, 0
    if ftype not in ("cross_view_attention", "bottleneck"):
        raise ValueError(f"unknown fusion type {ftype!r}")
    layers = sorted(int(v) for v in _get(fcfg, "fusion_layers", []))
    return (ftype, layers, bool(_get(fcfg, "fuse_in_descending_order", True)),
            bool(_get(fcfg, "use_query_config", True)), int(_get(fcfg, "bottleneck_tokens", 0)))


def _geometry(views: list[dict], frames: int, height: int, width: int, classifier: str) -> None:
    """Add temporal/spatial token counts per view: t, gh, gw, n (tokens per frame)."""
    for v in views:
        v["t"], v["gh"], v["gw"] = frames // v["pt"], height // v["ph"], width // v["pw"]
        v["n"] = v["gh"] * v["gw"] + (1 if classifier == "token" else 0)
    t_aligned = min(v["t"] for v in views)
    for v in views:
        if v["t"] % t_aligned:
            raise ValueError(f"temporal tokens {[w['t'] for w in views]} are not multiples of {t_aligned}")
        v["r"] = v["t"] // t_aligned


def _bottleneck_plan(views: list[dict], fusion_layers: list[int], descending: bool
                     ) -> tuple[int, list[tuple[int, int, int, int]]]:
    """Bottleneck width at start and the (layer, view, c_in, c_out) projections Scenic creates."""
    order = list(range(len(views)))[::-1] if descending else list(range(len(views)))
    width = views[order[0]]["c"]
    start, projections = width, []
    for layer in fusion_layers:
        for i in order:
            if layer >= views[i]["layers"]:
                continue
            if width != views[i]["c"]:
                projections.append((layer, i, width, views[i]["c"]))
                width = views[i]["c"]
    return start, projections


def _cross_pairs(n_views: int, descending: bool) -> list[tuple[int, int]]:
    """(query view, key/value view) pairs of neighbours."""
    if descending:
        return [(i - 1, i) for i in range(n_views - 1, 0, -1)]
    return [(i + 1, i) for i in range(n_views - 1)]


# ----------------------------------------------------------------------------------------------------
# Maths


def _ln(x: np.ndarray, p: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * p[f"{prefix}/scale"] + p[f"{prefix}/bias"]


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _dense(x: np.ndarray, p: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    return x @ p[f"{prefix}/kernel"] + p[f"{prefix}/bias"]


def _mha(xq: np.ndarray, xkv: np.ndarray, p: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    q = np.einsum("bld,dhk->blhk", xq, p[f"{prefix}/query/kernel"]) + p[f"{prefix}/query/bias"]
    k = np.einsum("bld,dhk->blhk", xkv, p[f"{prefix}/key/kernel"]) + p[f"{prefix}/key/bias"]
    v = np.einsum("bld,dhk->blhk", xkv, p[f"{prefix}/value/kernel"]) + p[f"{prefix}/value/bias"]
    q = q / np.sqrt(q.shape[-1])
    logits = np.einsum("bqhk,bshk->bhqs", q, k)
    logits = logits - logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w = w / w.sum(-1, keepdims=True)
    o = np.einsum("bhqs,bshk->bqhk", w, v)
    return np.einsum("bqhk,hko->bqo", o, p[f"{prefix}/out/kernel"]) + p[f"{prefix}/out/bias"]


def _mlp(x: np.ndarray, p: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    return _dense(_gelu_tanh(_dense(x, p, f"{prefix}/Dense_0")), p, f"{prefix}/Dense_1")


def _vit_block(x: np.ndarray, p: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    """Scenic's pre-LN Encoder1DBlock."""
    y = _ln(x, p, f"{prefix}/LayerNorm_0")
    x = x + _mha(y, y, p, f"{prefix}/MultiHeadDotProductAttention_0")
    return x + _mlp(_ln(x, p, f"{prefix}/LayerNorm_1"), p, f"{prefix}/MlpBlock_0")


def _tubelet_embed(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """VALID 3-D conv with stride = kernel: (B, F, H, W, C) -> (B, t, gh*gw, c)."""
    pt, ph, pw, cin, _ = kernel.shape
    b, f, h, w, _ = x.shape
    t, gh, gw = f // pt, h // ph, w // pw
    x = x[:, : t * pt, : gh * ph, : gw * pw]
    x = x.reshape(b, t, pt, gh, ph, gw, pw, cin)
    out = np.einsum("btxgyhzc,xyzcd->btghd", x, kernel) + bias
    return out.reshape(b, t, gh * gw, -1)


def _frame_feature(x: np.ndarray, classifier: str) -> np.ndarray:
    """Reduce the token axis (-2): token 0 for 'token'/'0', else mean/max/sum."""
    if classifier in ("token", "0"):
        return x[..., 0, :]
    return _pool(x, classifier, axis=-2)


def _pool(x: np.ndarray, how: str, axis: int | tuple[int, ...]) -> np.ndarray:
    if how == "gap":
        return x.mean(axis)
    if how == "gmp":
        return x.max(axis)
    if how == "gsp":
        return x.sum(axis)
    raise ValueError(f"unknown classifier {how!r}")


# ----------------------------------------------------------------------------------------------------
# Forward


def _multiview_encode(xs: list[np.ndarray], p: Mapping[str, np.ndarray], views: list[dict],
                      fusion: tuple, batch_steps: int) -> list[np.ndarray]:
    """The multiview encoder on aligned sequences (B*T, r_i*n_i, c_i)."""
    ftype, fusion_layers, descending, _, _ = fusion
    n_layers = max(v["layers"] for v in views)
    order = list(range(len(views)))[::-1] if descending else list(range(len(views)))
    bottleneck = None
    if ftype == "bottleneck":
        bn = p["bottleneck"]  # (1, T, m, c_b): one set per aligned step, folded into the batch
        t_aligned = bn.shape[1]
        bottleneck = np.broadcast_to(bn, (batch_steps // t_aligned,) + bn.shape[1:])
        bottleneck = bottleneck.reshape(batch_steps, bn.shape[2], bn.shape[3])
    for layer in range(n_layers):
        fused = layer in fusion_layers
        if fused and ftype == "cross_view_attention":
            pre = f"{ENCODER}/cross_view_encoderblock_{layer}"
            z = [_ln(x, p, f"{pre}/cross_attention_ln_view{i}") for i, x in enumerate(xs)]
            xs = list(xs)
            for q, kv in _cross_pairs(len(xs), descending):
                xs[q] = xs[q] + _mha(z[q], z[kv], p, f"{pre}/cross_attention_view{q}_{kv}")
            for i, v in enumerate(views):
                if layer < v["layers"]:
                    y = _ln(xs[i], p, f"{pre}/msa_ln_view{i}")
                    xs[i] = xs[i] + _mha(y, y, p, f"{pre}/msa_view{i}")
                    xs[i] = xs[i] + _mlp(_ln(xs[i], p, f"{pre}/mlp_ln_view{i}"), p, f"{pre}/mlp_view{i}")
            continue
        xs = list(xs)
        for i in order:
            if layer >= views[i]["layers"]:
                continue
            name = f"{ENCODER}/encoderblock_{layer}_view{i}"
            if fused:  # bottleneck
                if bottleneck.shape[-1] != views[i]["c"]:
                    bottleneck = _dense(bottleneck, p, f"{ENCODER}/bottleneck_linear_{layer}_view{i}")
                n_tok = xs[i].shape[1]
                y = _vit_block(np.concatenate([xs[i], bottleneck], axis=1), p, name)
                xs[i], bottleneck = y[:, :n_tok], y[:, n_tok:]
            else:
                xs[i] = _vit_block(xs[i], p, name)
    return xs


def _global_encode(seq: np.ndarray, p: Mapping[str, np.ndarray]) -> np.ndarray:
    """Global ViT encoder on (B', S, C) with posembed, blocks and encoder_norm (no pooling)."""
    seq = seq + p["global_encoder/posembed_input/pos_embedding"]
    layer = 0
    while f"global_encoder/encoderblock_{layer}/LayerNorm_0/scale" in p:
        seq = _vit_block(seq, p, f"global_encoder/encoderblock_{layer}")
        layer += 1
    return _ln(seq, p, "global_encoder/encoder_norm")


def forward(params: Mapping[str, np.ndarray], config: Any, x: np.ndarray, *,
            endpoint: str = "logits") -> np.ndarray:
    """MTV inference in float64: logits (B, classes) or pre_logits ((B, C), or 5-D when spatiotemporal)."""
    if endpoint not in ("logits", "pre_logits"):
        raise ValueError(f"endpoint must be 'logits' or 'pre_logits', got {endpoint!r}")
    return intermediates(params, config, x)[endpoint]


def intermediates(params: Mapping[str, np.ndarray], config: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """All stages in float64: embedded_view{i}, encoded_view{i}, global_encoder_out, pre_logits, logits."""
    out: dict[str, np.ndarray] = {}
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    mcfg = config["model"]
    classifier = _get(mcfg, "classifier", "token")
    keep_st = bool(_get(mcfg, "keep_spatiotemporal_features", False))
    gcfg = _get(mcfg, "global_encoder_config")
    merge = _get(gcfg, "merge_axis", "channel")
    views = _views(config)
    fusion = _fusion(config)
    b, f, h, w, _ = x.shape
    _geometry(views, f, h, w, classifier)
    t_aligned = min(v["t"] for v in views)

    xs = []
    for i, v in enumerate(views):
        tok = _tubelet_embed(x, p[f"embedding_view{i}/kernel"], p[f"embedding_view{i}/bias"])
        out[f"embedded_view{i}"] = tok
        if classifier == "token":
            cls = np.broadcast_to(p[f"cls_view{i}"], (b, v["t"], 1, v["c"]))
            tok = np.concatenate([cls, tok], axis=2)
        tok = tok + p[f"{ENCODER}/posembed_input_view{i}/pos_embedding"][:, None]  # same table per frame
        xs.append(tok.reshape(b * t_aligned, v["r"] * v["n"], v["c"]))

    xs = _multiview_encode(xs, p, views, fusion, b * t_aligned)
    for i, (xi, v) in enumerate(zip(xs, views, strict=True)):
        out[f"encoded_view{i}"] = xi.reshape(b, t_aligned, v["r"] * v["n"], v["c"])
    xs = [xi.reshape(b, v["t"], v["n"], v["c"]) for xi, v in zip(xs, views, strict=True)]
    max_t = max(v["t"] for v in views)

    if keep_st and classifier == "token":
        raise ValueError("keep_spatiotemporal_features needs classifier 'gap', 'gmp' or 'gsp'")
    if keep_st and len({(v["ph"], v["pw"]) for v in views}) > 1:
        raise ValueError("keep_spatiotemporal_features needs the same spatial patch size in every view")
    # per view: (B, t_i, c_i) per-frame features, or (B, t_i, P, c_i) with keep_spatiotemporal_features
    feats = xs if keep_st else [_frame_feature(xi, classifier) for xi in xs]
    if merge == "channel":
        # whole-sequence tiling (tf.tile), not element repeat
        seq = np.concatenate([np.tile(fi, (1, max_t // v["t"]) + (1,) * (fi.ndim - 2))
                              for fi, v in zip(feats, views, strict=True)], axis=-1)
    elif merge == "time":
        seq = np.concatenate([_dense(fi, p, f"global_encoder_linear_view{i}") for i, fi in enumerate(feats)],
                             axis=1)
    else:
        raise ValueError(f"unknown merge_axis {merge!r}")

    if keep_st:  # the global encoder runs over time, independently at every spatial position
        steps, n_pos, width = seq.shape[1:]
        enc = _global_encode(seq.transpose(0, 2, 1, 3).reshape(b * n_pos, steps, width), p)
        enc = enc.reshape(b, n_pos, steps, width).transpose(0, 2, 1, 3)
        out["global_encoder_out"] = out["pre_logits"] = enc.reshape(
            b, steps, views[0]["gh"], views[0]["gw"], width)
        # Scenic pools (T, H, W) with the classifier's own reduction here (model.py _extract_encoder_output)
        pooled = _pool(out["pre_logits"], classifier, axis=(1, 2, 3))
    else:
        if classifier == "token":
            seq = np.concatenate([np.broadcast_to(p["cls_global"], (b, 1, seq.shape[-1])), seq], axis=1)
        enc = _global_encode(seq, p)
        out["global_encoder_out"] = out["pre_logits"] = pooled = _frame_feature(enc, classifier)
    if "output_projection/kernel" in p:  # absent when Scenic's final_endpoint is 'pre_logits'
        out["logits"] = _dense(pooled, p, "output_projection")
    return out


# ----------------------------------------------------------------------------------------------------
# Random params with exactly Scenic's names and shapes


def param_shapes(config: Any, input_shape: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    """Flat Flax name -> shape of every param, for an input shape (B, F, H, W, C) or (F, H, W, C)."""
    f, h, w, cin = (int(s) for s in input_shape[-4:])
    mcfg = config["model"]
    classifier = _get(mcfg, "classifier", "token")
    keep_st = bool(_get(mcfg, "keep_spatiotemporal_features", False))
    gcfg = _get(mcfg, "global_encoder_config")
    merge = _get(gcfg, "merge_axis", "channel")
    views = _views(config)
    ftype, fusion_layers, descending, use_query, n_bottleneck = _fusion(config)
    _geometry(views, f, h, w, classifier)
    t_aligned = min(v["t"] for v in views)
    max_t = max(v["t"] for v in views)
    shapes: dict[str, tuple[int, ...]] = {}

    def ln(prefix: str, c: int) -> None:
        shapes[f"{prefix}/scale"] = (c,)
        shapes[f"{prefix}/bias"] = (c,)

    def dense(prefix: str, cin_: int, cout: int) -> None:
        shapes[f"{prefix}/kernel"] = (cin_, cout)
        shapes[f"{prefix}/bias"] = (cout,)

    def attn(prefix: str, cq: int, ckv: int, heads: int, width: int) -> None:
        hd = width // heads
        for name, c in (("query", cq), ("key", ckv), ("value", ckv)):
            shapes[f"{prefix}/{name}/kernel"] = (c, heads, hd)
            shapes[f"{prefix}/{name}/bias"] = (heads, hd)
        shapes[f"{prefix}/out/kernel"] = (heads, hd, cq)
        shapes[f"{prefix}/out/bias"] = (cq,)

    def mlp(prefix: str, c: int, m: int) -> None:
        dense(f"{prefix}/Dense_0", c, m)
        dense(f"{prefix}/Dense_1", m, c)

    def block(prefix: str, c: int, heads: int, m: int) -> None:
        ln(f"{prefix}/LayerNorm_0", c)
        attn(f"{prefix}/MultiHeadDotProductAttention_0", c, c, heads, c)
        ln(f"{prefix}/LayerNorm_1", c)
        mlp(f"{prefix}/MlpBlock_0", c, m)

    for i, v in enumerate(views):
        shapes[f"embedding_view{i}/kernel"] = (v["pt"], v["ph"], v["pw"], cin, v["c"])
        shapes[f"embedding_view{i}/bias"] = (v["c"],)
        if classifier == "token":
            shapes[f"cls_view{i}"] = (1, v["t"], 1, v["c"])
        shapes[f"{ENCODER}/posembed_input_view{i}/pos_embedding"] = (1, v["n"], v["c"])
    cva_layers = fusion_layers if ftype == "cross_view_attention" else []
    for layer in range(max(v["layers"] for v in views)):
        if layer in cva_layers:
            pre = f"{ENCODER}/cross_view_encoderblock_{layer}"
            for i, v in enumerate(views):
                ln(f"{pre}/cross_attention_ln_view{i}", v["c"])
            for q, kv in _cross_pairs(len(views), descending):
                src = views[q] if use_query else views[kv]
                attn(f"{pre}/cross_attention_view{q}_{kv}", views[q]["c"], views[kv]["c"],
                     src["heads"], src["c"])
            for i, v in enumerate(views):
                if layer < v["layers"]:
                    ln(f"{pre}/msa_ln_view{i}", v["c"])
                    attn(f"{pre}/msa_view{i}", v["c"], v["c"], v["heads"], v["c"])
                    ln(f"{pre}/mlp_ln_view{i}", v["c"])
                    mlp(f"{pre}/mlp_view{i}", v["c"], v["mlp"])
            continue
        for i, v in enumerate(views):
            if layer < v["layers"]:
                block(f"{ENCODER}/encoderblock_{layer}_view{i}", v["c"], v["heads"], v["mlp"])
    if ftype == "bottleneck":
        start, projections = _bottleneck_plan(views, fusion_layers, descending)
        shapes["bottleneck"] = (1, t_aligned, n_bottleneck, start)
        for layer, i, c_in, c_out in projections:
            dense(f"{ENCODER}/bottleneck_linear_{layer}_view{i}", c_in, c_out)

    if keep_st and classifier == "token":
        raise ValueError("keep_spatiotemporal_features needs classifier 'gap', 'gmp' or 'gsp'")
    if merge == "channel":
        width, seq_len = sum(v["c"] for v in views), max_t
    else:
        width, seq_len = int(gcfg["hidden_size"]), sum(v["t"] for v in views)
        for i, v in enumerate(views):
            dense(f"global_encoder_linear_view{i}", v["c"], width)
    if classifier == "token":
        shapes["cls_global"] = (1, 1, width)
        seq_len += 1
    shapes["global_encoder/posembed_input/pos_embedding"] = (1, seq_len, width)
    for layer in range(int(gcfg["num_layers"])):
        block(f"global_encoder/encoderblock_{layer}", width, int(gcfg["num_heads"]), int(gcfg["mlp_dim"]))
    ln("global_encoder/encoder_norm", width)
    if _get(mcfg, "final_endpoint", "logits") == "logits":
        dense("output_projection", width, num_classes)
    return shapes


def init_params(config: Any, input_shape: tuple[int, ...], num_classes: int,
                rng: np.random.Generator | int = 0, *, std: float = 0.2) -> dict[str, np.ndarray]:
    """Random float32 params (normal, LayerNorm scales around 1) with Scenic's names and shapes."""
    rng = np.random.default_rng(rng)
    params = {}
    for name, shape in sorted(param_shapes(config, input_shape, num_classes).items()):
        value = rng.standard_normal(shape) * std
        if name.endswith("/scale"):
            value = 1.0 + value
        params[name] = value.astype(np.float32)
    return params


def num_params(config: Any, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Total number of scalars in the param tree (from shapes only)."""
    return sum(int(np.prod(s)) for s in param_shapes(config, input_shape, num_classes).values())


# ----------------------------------------------------------------------------------------------------
# Tiny Scenic-style configs for tests


def scenic_config(views: list[tuple], *, fusion: dict | None = None, global_encoder: dict | None = None,
                  classifier: str = "token", num_frames: int = 8, **model_fields: Any) -> dict:
    """A Scenic MTV experiment config (plain dict); views are (hidden, heads, mlp, layers, (ph, pw, pt))."""
    view_configs = [{"hidden_size": c, "num_heads": h, "mlp_dim": m, "num_layers": n, "patches": {"size": list(p)}}
                    for c, h, m, n, p in views]
    model = {
        "view_configs": view_configs,
        "cross_view_fusion": fusion,
        "global_encoder_config": global_encoder or {"num_heads": 2, "mlp_dim": 24, "num_layers": 1,
                                                    "hidden_size": 20, "merge_axis": "channel"},
        "temporal_encoding_config": {"method": "3d_conv", "kernel_init_method": "central_frame_initializer"},
        "classifier": classifier,
        "dropout_rate": 0.0,
        "attention_dropout_rate": 0.0,
        "stochastic_depth": 0.0,
        **model_fields,
    }
    return {"model_name": "mtv_multiclass_classification", "dataset_configs": {"num_frames": num_frames},
            "model": model}
