"""Bounded fuzz pass over the YAML loaders (runs in CI in a few seconds).

Random mutations of a valid recipe mapping, random YAML text, and byte-level
damage of the bundled recipe and accelerator files must give either a valid
config or an `InputError` whose message is one line naming the file; any
other exception is a bug. (tests/hwmodels/test_load.py fuzzes the
accelerator mapping; this adds the recipe loader and the text level.)
"""

from __future__ import annotations

import copy
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hwmodels
from hwmodels.spec import NPUSpec
from reference.recipes.config import RecipeConfig, load_recipe, recipe_from_dict
from simulator.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])

_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["static", "mse", "minmax", "percentile", "8"]))
_ANY = st.recursive(_SCALAR, lambda c: st.one_of(st.lists(c, max_size=3),
                                                 st.dictionaries(st.text(max_size=8), c, max_size=3)),
                    max_leaves=6)
_BASE = dict(RecipeConfig().__dict__)
_KEYS = sorted(_BASE) + ["recipe_", "bits", "w_bitz", ""]


def _check(load, where: str):
    try:
        cfg = load()
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(where), msg
        return None
    return cfg


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["set", "delete"]), st.sampled_from(_KEYS), _ANY), max_size=4),
       st.booleans())
def test_recipe_mapping_mutations(ops, replace_whole):
    d = copy.deepcopy(_BASE)
    for op, key, value in ops:
        if op == "set":
            d[key] = value
        else:
            d.pop(key, None)
    data = ops[0][2] if (replace_whole and ops) else d
    cfg = _check(lambda: recipe_from_dict(data, where="fuzz.yaml"), "fuzz.yaml: ")
    if cfg is not None:
        assert isinstance(cfg, RecipeConfig) and 2 <= cfg.w_bits <= 8 and 2 <= cfg.a_bits <= 8
        assert 1 <= cfg.calib_images and isinstance(cfg.params, dict)


@FUZZ
@given(st.text(max_size=80))
def test_recipe_yaml_text(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("r") / "r.yaml"
    p.write_text(text, encoding="utf-8")
    cfg = _check(lambda: load_recipe(p), str(p))
    assert cfg is None or isinstance(cfg, RecipeConfig)


def _damaged(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for pos, kind, byte in edits:
        i = pos % max(len(b), 1)
        if kind == "flip" and b:
            b[i] ^= 1 << (byte % 8)
        elif kind == "insert":
            b.insert(i, byte)
        elif b:
            del b[i]
    return bytes(b)


_EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "insert", "delete"]),
                            st.integers(0, 255)), min_size=1, max_size=3)


@FUZZ
@given(_EDITS)
def test_damaged_recipe_file(tmp_path_factory, edits):
    src = (ROOT / "configs" / "recipes" / "static_w8a8.yaml").read_bytes()
    p = tmp_path_factory.mktemp("r") / "r.yaml"
    p.write_bytes(_damaged(src, edits))
    cfg = _check(lambda: load_recipe(p), str(p))
    assert cfg is None or isinstance(cfg, RecipeConfig)


@FUZZ
@given(_EDITS)
def test_damaged_accelerator_file(tmp_path_factory, edits):
    src = (ROOT / "configs" / "npu_int8.yaml").read_bytes()
    p = tmp_path_factory.mktemp("h") / "npu.yaml"
    p.write_bytes(_damaged(src, edits))
    npu = _check(lambda: hwmodels.load(p), str(p))
    assert npu is None or isinstance(npu, NPUSpec)
