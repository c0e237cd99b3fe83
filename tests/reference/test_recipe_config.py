"""Recipe YAML -> RecipeConfig: the bundled files load; every mistake is one
InputError line naming the file and the field."""

from __future__ import annotations

import glob
import os

import pytest

from reference.recipes.config import RecipeConfig, load_recipe, recipe_from_dict
from simulator.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "static_*.yaml")))   # other recipes: their own tests

GOOD = """\
recipe: static
w_bits: 6
a_bits: 8
residual_bits: 16
edge_bits: 8
weight_calibration: minmax
act_calibration: percentile
percentile: 99.9
calib_images: 32
"""


def _write(tmp_path, text, name="recipe.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _error(path) -> str:
    with pytest.raises(InputError) as ei:
        load_recipe(path)
    msg = str(ei.value)
    assert "\n" not in msg, f"multi-line message: {msg!r}"
    assert msg.startswith(f"{path}:"), msg
    return msg


def test_bundled_recipes_exist():
    names = {os.path.basename(p) for p in RECIPE_FILES}
    assert {"static_w8a8.yaml", "static_w6a6.yaml", "static_w4a8.yaml", "static_w4a4.yaml"} <= names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=os.path.basename)
def test_bundled_recipe_loads(path):
    cfg = load_recipe(path)
    recipe = os.path.basename(path).rsplit("_w", 1)[0]           # <recipe>_w<W>a<A>.yaml
    w, a = os.path.basename(path)[len(recipe) + 2:-len(".yaml")].split("a")
    assert (cfg.w_bits, cfg.a_bits) == (int(w), int(a))
    if cfg.mechanisms:                                            # composed: static + mechanisms
        assert cfg.recipe == "static" and cfg.label == "+".join(n for n, _ in cfg.mechanisms) + f"_w{w}a{a}"
        return
    if cfg.params.get("softmax"):                                 # static + a post-softmax option
        assert cfg.recipe == "static" and cfg.label == f"{recipe}_w{w}a{a}"
        return
    assert isinstance(cfg, RecipeConfig) and cfg.recipe == recipe
    assert cfg.label == f"{recipe}_w{w}a{a}"


def test_all_fields_parsed(tmp_path):
    cfg = load_recipe(_write(tmp_path, GOOD))
    assert cfg == RecipeConfig(recipe="static", w_bits=6, a_bits=8, residual_bits=16, edge_bits=8,
                               weight_calibration="minmax", act_calibration="percentile", percentile=99.9,
                               calib_images=32)
    assert isinstance(cfg.percentile, float)


def test_minimal_recipe_uses_defaults(tmp_path):
    cfg = load_recipe(_write(tmp_path, "recipe: static\n"))
    assert cfg == RecipeConfig()
    assert load_recipe(_write(tmp_path, "recipe: static\npercentile: 100\n")).percentile == 100.0


def test_unknown_field_with_did_you_mean(tmp_path):
    p = _write(tmp_path, GOOD + "w_bit: 4\n")
    msg = _error(p)
    assert "w_bit" in msg and "unknown field" in msg and "did you mean 'w_bits'" in msg


def test_unknown_field_without_close_match(tmp_path):
    msg = _error(_write(tmp_path, GOOD + "zzzz: 1\n"))
    assert "zzzz: unknown field" in msg and "did you mean" not in msg


def test_missing_recipe_field(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("recipe: static\n", "")))
    assert ": recipe:" in msg and "missing" in msg


def test_unknown_recipe_name(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("recipe: static", "recipe: statc")))
    assert ": recipe:" in msg and "did you mean 'static'" in msg


@pytest.mark.parametrize("field, value, expect", [
    ("w_bits", '"8"', "expected an integer"),
    ("a_bits", "8.0", "expected an integer"),
    ("w_bits", "true", "expected an integer"),
    ("calib_images", "[1, 2]", "expected an integer"),
    ("percentile", "high", "expected a number"),
    ("percentile", "false", "expected a number"),
    ("weight_calibration", "percentile", "expected one of minmax, mse"),
    ("act_calibration", "kl", "expected one of minmax, percentile, mse"),
    ("act_calibration", "[mse]", "expected one of"),
    ("params", "3", "expected a mapping"),
])
def test_wrong_types(tmp_path, field, value, expect):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(field + ":"))
    msg = _error(_write(tmp_path, text + f"\n{field}: {value}\n"))
    assert f": {field}:" in msg and expect in msg, msg


@pytest.mark.parametrize("field, value", [("w_bits", 1), ("w_bits", 9), ("a_bits", 0), ("a_bits", 16),
                                          ("residual_bits", 7), ("residual_bits", 25), ("edge_bits", -1),
                                          ("edge_bits", 9), ("percentile", 49.9), ("percentile", 100.5),
                                          ("calib_images", 0), ("percentile", ".nan")])
def test_out_of_range(tmp_path, field, value):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(field + ":"))
    msg = _error(_write(tmp_path, text + f"\n{field}: {value}\n"))
    assert f": {field}: expected a value in [" in msg, msg


@pytest.mark.parametrize("field, value", [("w_bits", 2), ("w_bits", 8), ("edge_bits", 0), ("percentile", 50),
                                          ("residual_bits", 24)])
def test_range_edges_accepted(tmp_path, field, value):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(field + ":"))
    cfg = load_recipe(_write(tmp_path, text + f"\n{field}: {value}\n"))
    assert getattr(cfg, field) == value


@pytest.mark.parametrize("text, where", [("recipe: static\nw_bits: [8\n", "line"),
                                         ("recipe: static\n  w_bits: 8\n bad", "line"),
                                         ("recipe: 'static\n", "line"),
                                         ("a: 1\na: {b\n", "line")])
def test_bad_yaml_syntax(tmp_path, text, where):
    msg = _error(_write(tmp_path, text))
    assert "invalid YAML" in msg and where in msg


@pytest.mark.parametrize("text, kind", [("", "NoneType"), ("- recipe: static\n", "list"), ("static\n", "str")])
def test_not_a_mapping(tmp_path, text, kind):
    msg = _error(_write(tmp_path, text))
    assert "expected a mapping" in msg and kind in msg


def test_missing_file(tmp_path):
    msg = _error(tmp_path / "nope.yaml")
    assert "no such recipe file" in msg


def test_directory_and_binary_file(tmp_path):
    _error(tmp_path)
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00\x81recipe")
    _error(p)


def test_recipe_from_dict_names_where():
    with pytest.raises(InputError, match=r"^cli: w_bits: expected a value in \[2, 8\], got 12$"):
        recipe_from_dict({"recipe": "static", "w_bits": 12}, where="cli")
    sm = {"softmax": {"quantizer": "log2"}}
    assert recipe_from_dict({"recipe": "static", "params": sm}).params == sm
    with pytest.raises(InputError, match=r"^recipe: params.k: unknown static parameter"):   # static checks its params
        recipe_from_dict({"recipe": "static", "params": {"k": 1}})


def test_with_bits():
    cfg = RecipeConfig().with_bits(4, 6)
    assert (cfg.w_bits, cfg.a_bits, cfg.label) == (4, 6, "static_w4a6")
    assert RecipeConfig(w_bits=6).with_bits(a_bits=4).w_bits == 6


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "*.yaml"))),
                         ids=os.path.basename)
def test_every_bundled_recipe_yaml_loads(path):
    from reference.recipes import RECIPES

    cfg = load_recipe(path)
    assert cfg.recipe in RECIPES
    assert os.path.basename(path).startswith(cfg.recipe) or cfg.mechanisms    # composed: tsptq_groups_*
