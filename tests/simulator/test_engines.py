"""`simulate --engine`: the integer graph is the only engine; ``legacy`` is refused in one line."""

from __future__ import annotations

import json

import pytest

from simulator.cli import main
from test_cli_interface import _rgb_folder   # one random RGB ImageFolder writer for the CLI tests
from simulator.engines import choose_engine
from simulator.errors import InputError

pytestmark = pytest.mark.slow


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_graph_and_auto_are_the_same_run(tmp_path, capsys):
    """``--engine graph`` and ``auto`` (kept for scripts) print and record the same run on the graph."""
    results = {}
    for engine in ("auto", "graph"):
        js = tmp_path / f"{engine}.json"
        code, out, err = _run(capsys, "--engine", engine, "--images", "48", "--recipe", "static_w4a4",
                              "--hw", "npu_int8", "--json", str(js), "--no-progress", "--quiet")
        assert code == 0, err
        assert "bit-exact: 48/48 images" in out
        results[engine] = json.loads(js.read_text())
    auto, graph = results["auto"], results["graph"]
    assert auto["engine"] == graph["engine"] == "graph"
    assert graph["top1"] == auto["top1"]
    assert graph["bops_per_image"] == auto["bops_per_image"]
    assert graph["hardware"][0]["per_image"]["cycles"] == auto["hardware"][0]["per_image"]["cycles"]


def test_default_engine_runs_deit3(tmp_path, capsys):
    """DeiT-III (no_embed_class, LayerScale), which the removed legacy walk refused, runs by default."""
    data = _rgb_folder(tmp_path / "imgs", classes=2, per_class=3, size=32)
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "--model", "deit3_small_patch16_224", "--img-size", "32", "--num-classes", "2",
                          "--data", str(data), "--json", str(js), "--no-progress", "--quiet")
    assert code == 0, err
    assert "bit-exact: 6/6 images" in out
    assert json.loads(js.read_text())["engine"] == "graph"


def test_legacy_engine_is_refused_in_one_line(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = _run(capsys, "--engine", "legacy", "--json", str(out_json), "--no-progress")
    assert code == 2 and out == ""
    assert err.splitlines() == ["simulate: error: --engine legacy: the hand-written legacy walks were removed "
                                "(issue 13); every recipe runs on the integer graph (--engine graph or auto)"]
    assert not out_json.exists()


def test_choose_engine():
    assert choose_engine("auto") == choose_engine("graph") == "graph"
    with pytest.raises(InputError, match="legacy walks were removed"):
        choose_engine("legacy")
    with pytest.raises(InputError, match="expected one of auto, graph, got 'fast'"):
        choose_engine("fast")


def test_every_recipe_has_a_graph_calibrator():
    from reference.recipes import CALIBRATORS, RECIPES
    from reference.recipes.config import RECIPE_NAMES

    assert set(CALIBRATORS) == set(RECIPE_NAMES) == {"static", "tsptq", "igq", "scalepredictor", "apq"}
    assert all(callable(f) for f in RECIPES.values())


def test_composed_mechanisms_run_on_the_graph(tmp_path, capsys):
    """`mechanisms: [two_scaled, groups]` (configs/recipes/tsptq_groups_w4a4.yaml) from the command line."""
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "--recipe", "tsptq_groups_w4a4", "--images", "24", "--json", str(js),
                          "--no-progress", "--quiet")
    assert code == 0, err
    assert "bit-exact: 24/24 images" in out and "recipe two_scaled+groups_w4a4" in out
    assert json.loads(js.read_text())["engine"] == "graph"
