"""Model variant strings such as 'Ti/8+S/4+B/2' -> per-view ViT configs.

Same names and behaviour as Scenic's `scenic/projects/mtv/config_utils.py` (google-research/scenic,
read at commit a6c4438309527730cde7c9c59d15c74e6113ea0a), so Scenic configs read the same here.

A variant lists the views joined by '+', coarsest tubelet first. Each view is `SIZE/TUBELET` where
SIZE is a ViT size (Ti, S, B, L, H) and TUBELET is one of
  `T`      temporal size only; height and width come from PATCH_SIZES (16, or 14 for H),
  `HxT`    square spatial patch H x H and temporal size T,
  `HxWxT`  all three.
`patches.size` is stored in Scenic's order (height, width, time).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from mtv.errors import ConfigError

# ViT sizes as Scenic's config_utils defines them (ViT paper table 1; H has 16 heads there too).
MODEL_SIZE_ORDER = ["Ti", "S", "B", "L", "H"]
HIDDEN_SIZES = {"Ti": 192, "S": 384, "B": 768, "L": 1024, "H": 1280}
MLP_DIMS = {"Ti": 768, "S": 1536, "B": 3072, "L": 4096, "H": 5120}
NUM_HEADS = {"Ti": 3, "S": 6, "B": 12, "L": 16, "H": 16}
NUM_LAYERS = {"Ti": 12, "S": 12, "B": 12, "L": 24, "H": 32}
# Default spatial (h, w) patch per size, used when a view gives only its temporal size.
PATCH_SIZES = {
    "Ti": (16, 16),
    "S": (16, 16),
    "B": (16, 16),
    "L": (16, 16),
    "H": (14, 14),
}

_FORMS = "'SIZE/T', 'SIZE/HxT' or 'SIZE/HxWxT' (e.g. 'B/2', 'B/16x2', 'B/16x16x2')"


def _valid_sizes() -> str:
    return ", ".join(MODEL_SIZE_ORDER)


def _size_dims(size: str) -> tuple[int, int, int, int]:
    return (HIDDEN_SIZES[size], NUM_HEADS[size], MLP_DIMS[size], NUM_LAYERS[size])


def _parse_tubelet(size: str, tubelet: str, view: str, variant: str) -> tuple[int, int, int]:
    """(h, w, t) from the part after '/', following Scenic's three accepted forms."""
    parts = tubelet.split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or len(numbers) > 3 or any(n <= 0 for n in numbers):
        raise ConfigError(
            f"Tubelet '{tubelet}' in view '{view}' of variant '{variant}' is malformed: expected "
            f"positive integers in the form {_FORMS}, where the last number is the temporal size."
        )
    if len(numbers) == 1:
        return (*PATCH_SIZES[size], numbers[0])
    if len(numbers) == 2:
        # Scenic: 'HxT' means a square H x H patch.
        return (numbers[0], numbers[0], numbers[1])
    return (numbers[0], numbers[1], numbers[2])


def parse_view_configs(variant: str) -> list[ml_collections.ConfigDict]:
    """Parses a variant such as 'Ti/8+S/4+B/2' into one view config per view, in order."""
    if not isinstance(variant, str) or not variant.strip():
        raise ConfigError(f"Model variant must be a non-empty string like 'Ti/8+S/4+B/2', got {variant!r}.")
    view_configs = []
    for view in variant.split("+"):
        view = view.strip()
        if view.count("/") != 1:
            raise ConfigError(
                f"View '{view}' of variant '{variant}' is malformed: expected {_FORMS}, "
                f"views joined by '+'. Valid sizes: {_valid_sizes()}."
            )
        size, tubelet = (p.strip() for p in view.split("/"))
        if size not in HIDDEN_SIZES:
            raise ConfigError(
                f"Unknown ViT size '{size}' in view '{view}' of variant '{variant}'. "
                f"Valid sizes: {_valid_sizes()}."
            )
        view_config = ml_collections.ConfigDict()
        view_config.hidden_size = HIDDEN_SIZES[size]
        view_config.patches = ml_collections.ConfigDict()
        view_config.num_heads = NUM_HEADS[size]
        view_config.mlp_dim = MLP_DIMS[size]
        view_config.num_layers = NUM_LAYERS[size]
        view_config.patches.size = _parse_tubelet(size, tubelet, view, variant)
        view_configs.append(view_config)
    return view_configs


def format_view_configs(view_configs: Sequence[ml_collections.ConfigDict]) -> str:
    """The shortest variant string that parse_view_configs turns back into these view configs."""
    views = []
    for index, view in enumerate(view_configs):
        width = (view.hidden_size, view.num_heads, view.mlp_dim, view.num_layers)
        size = next((s for s in MODEL_SIZE_ORDER if _size_dims(s) == width), None)
        if size is None:
            raise ConfigError(
                f"View {index} (hidden_size, num_heads, mlp_dim, num_layers) = {width} is not a standard "
                f"ViT size; valid sizes: {_valid_sizes()}."
            )
        h, w, t = (int(x) for x in view.patches.size)
        if (h, w) == PATCH_SIZES[size]:
            views.append(f"{size}/{t}")
        elif h == w:
            views.append(f"{size}/{h}x{t}")
        else:
            views.append(f"{size}/{h}x{w}x{t}")
    return "+".join(views)
