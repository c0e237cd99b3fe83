"""`simulate --engine`: the integer graph and the legacy walks from the command line."""

from __future__ import annotations

import json

import pytest

from simulator.cli import main
from test_cli_interface import _rgb_folder   # one random RGB ImageFolder writer for the CLI tests
from simulator.engines import GRAPH_RECIPES, choose_engine
from simulator.errors import InputError

pytestmark = pytest.mark.slow


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_graph_engine_reproduces_the_legacy_run(tmp_path, capsys):
    """Same images, same recipe: the two engines print the same accuracies and cost the same cycles."""
    results = {}
    for engine in ("legacy", "graph"):
        js = tmp_path / f"{engine}.json"
        code, out, err = _run(capsys, "--engine", engine, "--images", "48", "--recipe", "static_w4a4",
                              "--hw", "npu_int8", "--json", str(js), "--no-progress", "--quiet")
        assert code == 0, err
        assert "bit-exact: 48/48 images" in out
        results[engine] = json.loads(js.read_text())
    legacy, graph = results["legacy"], results["graph"]
    assert legacy["engine"] == "legacy" and graph["engine"] == "graph"
    assert graph["top1"] == legacy["top1"]
    assert graph["bops_per_image"] == legacy["bops_per_image"]
    assert graph["hardware"][0]["per_image"]["cycles"] == legacy["hardware"][0]["per_image"]["cycles"]


def test_auto_engine_runs_a_model_the_legacy_walk_refuses(tmp_path, capsys):
    """DeiT-III (no_embed_class, LayerScale) is refused by the legacy walk; auto takes the graph."""
    data = _rgb_folder(tmp_path / "imgs", classes=2, per_class=3, size=32)
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "--model", "deit3_small_patch16_224", "--img-size", "32", "--num-classes", "2",
                          "--data", str(data), "--json", str(js), "--no-progress", "--quiet")
    assert code == 0, err
    assert "bit-exact: 6/6 images" in out
    assert json.loads(js.read_text())["engine"] == "graph"


def test_legacy_engine_keeps_its_refusal(tmp_path, capsys):
    data = _rgb_folder(tmp_path / "imgs", classes=2, per_class=1, size=32)
    code, _, err = _run(capsys, "--engine", "legacy", "--model", "deit3_small_patch16_224", "--img-size", "32",
                        "--num-classes", "2", "--data", str(data), "--no-progress", "--quiet")
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("simulate: error:")]
    assert len(errors) == 1 and "no_embed_class=True" in errors[0], err   # (after the random-weights warnings)


def test_graph_engine_names_the_recipes_it_lacks():
    from reference.models import load_model

    with pytest.raises(InputError, match="does not run on the integer graph yet.*use --engine legacy"):
        choose_engine("graph", load_model(None), "a_future_recipe")


def test_choose_engine_prefers_legacy_where_it_applies():
    from reference.models import load_model

    model = load_model(None)
    assert choose_engine("auto", model, "static") == "legacy"
    assert choose_engine("graph", model, "static") == "graph"
    assert set(GRAPH_RECIPES) == {"static", "tsptq", "igq", "scalepredictor", "apq"}


def test_composed_mechanisms_run_on_the_graph(tmp_path, capsys):
    """`mechanisms: [two_scaled, groups]` (configs/recipes/tsptq_groups_w4a4.yaml) from the command line."""
    js = tmp_path / "r.json"
    code, out, err = _run(capsys, "--recipe", "tsptq_groups_w4a4", "--images", "24", "--json", str(js),
                          "--no-progress", "--quiet")
    assert code == 0, err
    assert "bit-exact: 24/24 images" in out and "recipe two_scaled+groups_w4a4" in out
    assert json.loads(js.read_text())["engine"] == "graph"
    code, _, err = _run(capsys, "--engine", "legacy", "--recipe", "tsptq_groups_w4a4", "--images", "4",
                        "--no-progress", "--quiet")
    assert code == 2 and "runs on the integer graph only" in err
