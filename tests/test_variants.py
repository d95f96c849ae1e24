"""Variant strings -> per-view configs, checked against the values in Scenic's config_utils."""

import pytest

from mtv import variants
from mtv.errors import ConfigError

# (hidden_size, num_heads, mlp_dim, num_layers) per ViT size, as listed in Scenic's config_utils.py.
SCENIC_SIZES = {
    "Ti": (192, 3, 768, 12),
    "S": (384, 6, 1536, 12),
    "B": (768, 12, 3072, 12),
    "L": (1024, 16, 4096, 24),
    "H": (1280, 16, 5120, 32),
}


def dims(view):
    return (view.hidden_size, view.num_heads, view.mlp_dim, view.num_layers)


@pytest.mark.parametrize("size", list(SCENIC_SIZES))
def test_every_size_has_scenic_dimensions(size):
    (view,) = variants.parse_view_configs(f"{size}/4")
    assert dims(view) == SCENIC_SIZES[size]


@pytest.mark.parametrize(
    "variant, expected",
    [
        # The cases of Scenic's config_utils_test.py.
        ("B/2", (16, 16, 2)),
        ("B/18x2", (18, 18, 2)),
        ("B/18x18x2", (18, 18, 2)),
        ("H/2", (14, 14, 2)),  # H defaults to 14x14 spatial patches
        ("L/12x10x3", (12, 10, 3)),
    ],
)
def test_tubelet_forms_give_h_w_t(variant, expected):
    (view,) = variants.parse_view_configs(variant)
    assert tuple(view.patches.size) == expected


def test_k400_variant_views_in_order():
    views = variants.parse_view_configs("Ti/8+S/4+B/2")
    assert [tuple(v.patches.size) for v in views] == [(16, 16, 8), (16, 16, 4), (16, 16, 2)]
    assert [dims(v) for v in views] == [SCENIC_SIZES["Ti"], SCENIC_SIZES["S"], SCENIC_SIZES["B"]]


def test_three_view_mixed_forms():
    views = variants.parse_view_configs("S/14x8+B/12x4+H/18x2")
    assert [tuple(v.patches.size) for v in views] == [(14, 14, 8), (12, 12, 4), (18, 18, 2)]
    assert views[2].to_dict() == {
        "hidden_size": 1280, "num_heads": 16, "mlp_dim": 5120, "num_layers": 32,
        "patches": {"size": (18, 18, 2)},
    }


def test_views_are_independent_objects():
    a, b = variants.parse_view_configs("B/2+B/2")
    a.hidden_size = 1
    assert b.hidden_size == 768


def test_unknown_size_names_part_and_lists_valid_sizes():
    with pytest.raises(ConfigError) as err:
        variants.parse_view_configs("Ti/8+X/4+B/2")
    message = str(err.value)
    assert "'X'" in message and "X/4" in message
    assert "Ti, S, B, L, H" in message


@pytest.mark.parametrize(
    "variant, bad_part",
    [
        ("B8", "B8"),
        ("B/", "''"),
        ("B/a", "'a'"),
        ("B/1x2x3x4", "1x2x3x4"),
        ("B/0", "'0'"),
        ("B/2/3", "B/2/3"),
        ("Ti/8++B/2", "''"),
    ],
)
def test_malformed_views_raise_config_error(variant, bad_part):
    with pytest.raises(ConfigError) as err:
        variants.parse_view_configs(variant)
    assert bad_part in str(err.value)


@pytest.mark.parametrize("variant", ["", "   ", None])
def test_empty_variant(variant):
    with pytest.raises(ConfigError, match="non-empty"):
        variants.parse_view_configs(variant)


@pytest.mark.parametrize("variant", ["Ti/8+S/4+B/2", "Ti/16+S/8+B/4+L/2", "H/2+S/14x8", "B/12x10x3"])
def test_format_round_trips(variant):
    assert variants.format_view_configs(variants.parse_view_configs(variant)) == variant


def test_format_uses_shortest_form():
    assert variants.format_view_configs(variants.parse_view_configs("B/16x16x2+H/14x2")) == "B/2+H/2"


def test_format_rejects_non_standard_width():
    (view,) = variants.parse_view_configs("B/2")
    view.num_layers = 7
    with pytest.raises(ConfigError, match="not a standard ViT size"):
        variants.format_view_configs([view])
