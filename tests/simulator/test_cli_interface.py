"""The command line as a new user meets it: help, version, fast errors, model flags,
accelerator identity, warnings, progress lines, CSV and JSON provenance."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulator import progress
from simulator.cli import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
NPU = ROOT / "configs" / "npu_int8.yaml"


class _Logged(list):
    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self)


@pytest.fixture
def logged():
    """Records of the project's loggers, whatever an earlier main() configured (levels, propagation)."""
    records = _Logged()
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("reference", "simulator")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield records
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _parsers():
    from reports.sweep import build_parser as sweep_parser
    from simulator.cost_command import _parser as cost_parser
    from simulator.onnx_command import _parser as onnx_parser
    from simulator.vectors.export import _parser as export_parser

    return {"simulate": build_parser(), "cost": cost_parser(), "sweep": sweep_parser(), "export-vectors": export_parser(),
            "export-onnx": onnx_parser()}


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: simulate [COMMAND] [options]" in out
    for name in ("cost", "sweep", "export-vectors", "verify-vectors", "export-onnx"):
        assert f"\n  {name} " in out.split("commands (", 1)[1], name
    assert set(SUBCOMMANDS) == {"cost", "sweep", "export-vectors", "verify-vectors", "export-onnx"}


@pytest.mark.parametrize("name", ["simulate", "cost", "sweep", "export-vectors", "export-onnx"])
def test_every_flag_has_a_help_line(name):
    parser = _parsers()[name]
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings or action.dest)


def test_verify_vectors_help_describes_its_argument(capsys):
    with pytest.raises(SystemExit):
        main(["verify-vectors", "--help"])
    assert "export-vectors" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    text = (ROOT / "pyproject.toml").read_text()
    version = text.split('version = "', 1)[1].split('"', 1)[0]
    assert capsys.readouterr().out.startswith(f"simulate (vit-intsim) {version}")


def test_unknown_subcommand_or_flag_is_one_line(capsys):
    for argv, needle in ((["costs"], "costs"), (["--imagez", "3"], "--imagez")):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and err.startswith("simulate: error:") and needle in err and len(err.splitlines()) == 1


# --- bad input fails before torch, timm or numba are imported ------------------------------

def _bad_inputs(tmp: Path) -> dict[str, list[str]]:
    (tmp / "recipe.yaml").write_text("recipe: igq\nw_bits: 4\na_bits: 4\n")
    (tmp / "npu_copy.yaml").write_text(NPU.read_text().replace("rows: 32", "rows: 64"))
    weights = (ROOT / "reference" / "default_model" / "vit_digits.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(weights[:5000])
    (tmp / "sweep.yaml").write_text("models: [{name: vit_digits}]\nrecipes:\n  - recipe: static\n"
                                    "  - recipe: igq\n    grid: {params.groups: [2, 3]}\naccelerators: [npu_int8]\n")
    return {
        "recipe params": ["--recipe", str(tmp / "recipe.yaml")],
        "accelerator name clash": ["--hw", "npu_int8", str(tmp / "npu_copy.yaml")],
        "truncated checkpoint": ["--checkpoint", str(tmp / "cut.safetensors")],
        "missing image folder": ["--data", str(tmp / "nope")],
        "output directory missing": ["--json", str(tmp / "no" / "r.json")],
        "sweep point params": ["sweep", str(tmp / "sweep.yaml")],
        "digits on an RGB model": ["--model", "deit_tiny_patch16_224"],
        "head of another class count": ["--checkpoint", str(ROOT / "reference" / "default_model" /
                                                            "vit_digits.safetensors"), "--num-classes", "3"],
        "bad --std": ["--std", "0.5", "0", "0.5"],
    }


def test_bad_inputs_fail_before_heavy_imports(tmp_path):
    """Each bad input is refused in a fresh interpreter that never loaded torch, timm or numba
    (the checks that make an error take well under 2 s instead of 10-30 s)."""
    cases = _bad_inputs(tmp_path)
    script = ("import json, sys\nfrom simulator.cli import main\nrc = main(json.loads(sys.argv[1]))\n"
              "print(json.dumps([rc, [m for m in ('torch', 'timm', 'numba') if m in sys.modules]]))")
    for name, argv in cases.items():
        r = subprocess.run([sys.executable, "-c", script, json.dumps(argv)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        rc, heavy = json.loads(r.stdout.strip().splitlines()[-1])
        lines = r.stderr.strip().splitlines()
        assert rc == 2 and heavy == [], (name, rc, heavy, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("simulate: error:"), (name, r.stderr)


def test_messages_name_the_file_and_field(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    expect = {
        "recipe params": "recipe.yaml: params: give exactly one of groups",
        "accelerator name clash": "npu_copy.yaml: name: 'npu_int8' is already the name of",
        "truncated checkpoint": "cut.safetensors: cannot read checkpoint (truncated or corrupted?)",
        "sweep point params": "sweep.yaml: recipes[1]: params.groups: expected one of [1, 2, 4, 8, 16], got 3",
        "head of another class count": "key 'head.weight' has shape (10, 96), model expects (3, 96)",
        "bad --std": "--std: expected positive numbers",
    }
    for name, needle in expect.items():
        code, _, err = _run(capsys, *cases[name])
        assert code == 2 and needle in err, (name, err)


# --- accelerators ----------------------------------------------------------------------------

def test_accelerator_identity_is_name_and_content(tmp_path):
    import hwmodels

    copy = tmp_path / "same.yaml"
    copy.write_bytes(NPU.read_bytes())
    specs = hwmodels.load_distinct(["npu_int8", str(NPU), str(copy), "mcu_int8"])
    assert [s.name for s in specs] == ["npu_int8", "mcu_int8"]          # identical content: one accelerator
    other = tmp_path / "bigger.yaml"
    other.write_text(NPU.read_text().replace("rows: 32", "rows: 64"))
    with pytest.raises(hwmodels.load.__globals__["InputError"]) as e:
        hwmodels.load_distinct([str(NPU), str(other)])
    assert str(other) in str(e.value) and str(NPU) in str(e.value)
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(other.read_text().replace("name: npu_int8", "name: npu_int8_64rows"))
    assert [s.name for s in hwmodels.load_distinct([str(NPU), str(renamed)])] == ["npu_int8", "npu_int8_64rows"]


def test_bare_accelerator_name_and_did_you_mean(tmp_path):
    import hwmodels
    from simulator.errors import InputError

    assert hwmodels.resolve_path("npu_int8") == str(NPU)
    with pytest.raises(InputError, match="did you mean 'npu_int8'"):
        hwmodels.resolve_path("npu_int9")


def test_sweep_refuses_two_accelerators_with_one_name(tmp_path):
    from reports.sweep_config import parse_sweep
    from simulator.errors import InputError

    other = tmp_path / "npu_big.yaml"
    other.write_text(NPU.read_text().replace("rows: 32", "rows: 64"))
    data = {"models": [{"name": "vit_digits"}], "recipes": [{"recipe": "static"}],
            "accelerators": ["npu_int8", str(other)]}
    with pytest.raises(InputError, match="accelerators: .*npu_big.yaml: name: 'npu_int8' is already the name"):
        parse_sweep(data, str(tmp_path / "s.yaml"))
    data["accelerators"] = ["npu_int8", str(NPU)]          # the same file twice: one accelerator
    assert len(parse_sweep(data, str(tmp_path / "s.yaml")).accelerators) == 1


# --- recipes -----------------------------------------------------------------------------------

def test_apq_labels_say_what_the_bits_mean():
    from reference.recipes.config import load_recipe

    assert load_recipe(ROOT / "configs" / "recipes" / "apq.yaml").label == "apq_mixed"
    assert load_recipe(ROOT / "configs" / "recipes" / "apq_exits_w8a8.yaml").label == "apq_exits_w8a8"
    assert load_recipe(ROOT / "configs" / "recipes" / "apq_exits_w4a4.yaml").label == "apq_exits_w4a4"


def test_every_shipped_recipe_passes_the_light_params_check():
    from reference.recipes.config import load_recipe

    for path in sorted((ROOT / "configs" / "recipes").glob("*.yaml")):
        load_recipe(path)       # params included, torch-free


def test_star_points_all_valid_with_default_params(tmp_path):
    from reports.sweep_config import parse_sweep

    spec = parse_sweep({"models": [{"name": "vit_digits"}], "recipes": [{"recipe": "*", "bits": ["w4a4"]}],
                        "accelerators": ["npu_int8"]}, str(tmp_path / "s.yaml"))
    labels = [r.label for r in spec.runs]
    assert labels == ["static_w4a4", "tsptq_w4a4", "igq_w4a4 groups=2", "scalepredictor_w4a4", "apq_exits_w4a4"]
    assert spec.runs[2].recipe["params"] == {"groups": 2}


# --- model flags and checkpoints ----------------------------------------------------------------

def _three_class_checkpoint(tmp_path: Path, wrap: bool) -> Path:
    import torch

    from reference.models import load_model

    torch.manual_seed(0)
    model = load_model(num_classes=3, shapes_only=True)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "ft3.pth"
    if wrap:    # a training script's file: EMA weights + optimizer, DDP prefixes
        ema = {f"module.{k}": v + 1.0 if v.is_floating_point() else v for k, v in sd.items()}
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "state_dict_ema": ema, "epoch": 3}, path)
    else:
        torch.save(sd, path)
    return path


def test_fine_tuned_checkpoint_with_num_classes(tmp_path):
    import torch

    from reference.models import load_model, model_input_config
    from simulator.errors import InputError

    path = _three_class_checkpoint(tmp_path, wrap=True)
    with pytest.raises(InputError, match=r"key 'head.weight' has shape \(3, 96\), model expects \(10, 96\); "
                                         r"pass --num-classes 3"):
        load_model(checkpoint=path)
    model = load_model(checkpoint=path, num_classes=3, mean=[0.4], std=[0.3], crop_pct=0.9,
                       interpolation="bicubic")
    assert model.num_classes == 3
    raw = torch.load(path, weights_only=True)["state_dict_ema"]           # timm's loader prefers EMA weights
    assert torch.equal(model.head.weight, raw["module.head.weight"])
    cfg = model_input_config(model)
    assert cfg["mean"] == (0.4,) and cfg["std"] == (0.3,) and cfg["crop_pct"] == 0.9
    assert cfg["interpolation"] == "bicubic"


def test_img_size_changes_the_patch_grid_and_resamples_pos_embed(tmp_path, logged):
    import torch

    from reference.models import load_model, model_input_config

    small = load_model(img_size=16, shapes_only=True)
    assert small.pos_embed.shape[1] == (16 // 2) ** 2 + 1
    assert model_input_config(small)["input_size"] == (1, 16, 16)
    path = tmp_path / "w8.pth"
    torch.save(load_model().state_dict(), path)          # an 8 px checkpoint run at 16 px
    model = load_model(checkpoint=path, img_size=16)
    assert model.pos_embed.shape[1] == 65 and "pos_embed resampled from 17 to 65" in logged.text


def test_random_weights_warning(logged):
    from reference.models import load_model

    load_model("vit_tiny_patch16_224", img_size=32, num_classes=4)
    assert "weights are random" in logged.text and logged[-1].levelno == logging.WARNING
    logged.clear()
    load_model("vit_tiny_patch16_224", img_size=32, shapes_only=True)
    assert logged.text == ""


def _rgb_folder(root: Path, classes: int, per_class: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_new_user_run_warns_once_each_and_records_what_ran(tmp_path, capsys):
    ckpt = _three_class_checkpoint(tmp_path, wrap=False)
    data = _rgb_folder(tmp_path / "imgs", classes=3, per_class=3, size=24)
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    code, out, err = _run(capsys, "--checkpoint", str(ckpt), "--num-classes", "3", "--data", str(data),
                          "--hw", "npu_int8", "mcu_int8", "--json", str(js), "--csv", str(cs), "--no-progress")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("simulate: warning:")]
    assert len(warnings) == 3, err
    assert any("are 24x24, the model's input is 8x8: resized" in w for w in warnings)
    assert any("RGB images converted to grayscale" in w for w in warnings)
    assert any("calibration: 9 images" in w and "asks for 128; calibrating on 9" in w for w in warnings)
    assert "bit-exact: 9/9 images" in out and "(calibrated on 9)" in out
    r = json.loads(js.read_text())
    assert r["calib_images_used"] == 9 and r["recipe"]["calib_images"] == 128
    assert r["tool"]["name"] == "vit-intsim" and r["tool"]["version"] and r["tool"]["created_utc"].endswith("Z")
    assert r["model_config"]["num_classes"] == 3
    hw = {h["npu"]["name"]: h for h in r["hardware"]}
    assert hw["npu_int8"]["accelerator"]["spec"]["pe_array"]["rows"] == 32
    assert hw["npu_int8"]["accelerator"]["file"] == str(NPU) and len(hw["mcu_int8"]["accelerator"]["sha256"]) == 64
    rows = list(csv.DictReader(cs.open()))
    assert [row["accelerator"] for row in rows] == ["npu_int8", "mcu_int8"]
    assert rows[0]["bit_exact_images"] == "9" and float(rows[0]["top1_simulator"]) == pytest.approx(
        r["top1"]["simulator"], abs=1e-4)
    assert float(rows[1]["cycles"]) == pytest.approx(hw["mcu_int8"]["per_image"]["cycles"], rel=1e-9)


@pytest.mark.slow
def test_class_count_mismatch_warns(tmp_path, capsys):
    data = _rgb_folder(tmp_path / "imgs", classes=3, per_class=2, size=8)
    code, _, err = _run(capsys, "--data", str(data), "--images", "4", "--no-progress", "--quiet")
    assert code == 0, err
    assert "3 classes, but the model's head has 10 outputs" in err
    assert "simulate: importing" not in err             # --quiet: warnings only


# --- progress ---------------------------------------------------------------------------------------

def test_progress_lines_when_not_a_terminal(logged, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.0)
    progress.configure(enabled=True)
    assert list(progress.track(range(4), "calibrating", unit="batch")) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in logged if r.name == "simulator.progress"]
    assert lines[0] == "calibrating: 0/4 batch (0%)"
    assert any(line.startswith("calibrating: 2/4 batch (50%)") and "ETA" in line for line in lines)
    assert lines[-1].startswith("calibrating: done, 4/4 batch (100%)")


def test_no_progress_silences_calibration(logged, monkeypatch):
    from reference.data import load_dataset
    from reference.lowering import lower
    from reference.models import load_model
    from reference.recipes.static_graph import collect_graph_stats, stat_names

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.0)
    model = load_model()
    images, _ = load_dataset("digits", model, split="calib", limit=40)
    graph = lower(model)

    def collect_boundaries(model, images, batch_size):     # the calibration walk of every recipe
        return collect_graph_stats(graph, images, stat_names(graph), batch_size=batch_size)

    progress.configure(enabled=False)
    try:
        collect_boundaries(model, images, batch_size=8)
        assert [r for r in logged if r.name == "simulator.progress"] == []
    finally:
        progress.configure(enabled=True)
    collect_boundaries(model, images, batch_size=8)
    assert any("calibrating on 40 images: done, 5/5 batch" in r.getMessage() for r in logged)


def test_format_seconds():
    assert [progress.format_seconds(s) for s in (3.21, 42, 185, 3725)] == ["3.2 s", "42 s", "3 min 05 s",
                                                                            "1 h 02 min"]


def _wait_for(logged, predicate, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(predicate(r.getMessage()) for r in list(logged)):
            return True
        time.sleep(0.01)
    return False


def test_a_long_step_is_never_silent(logged, monkeypatch):
    """Between two updates (a first batch that compiles for minutes) the heartbeat still writes lines."""
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "_period", lambda: 0.01)
    progress.configure(enabled=True)
    with progress.Progress(2, "evaluating", unit="batch") as bar:
        assert _wait_for(logged, lambda m: m.startswith("evaluating: 0/2 batch (0%), ") and "elapsed" in m)
        bar.update(2)
    with progress.phase("importing torch"):
        assert _wait_for(logged, lambda m: m.startswith("importing torch: ") and m.endswith("elapsed"))


def test_quiet_and_verbose_set_the_log_levels(capsys):
    from simulator.cli import configure_logging

    try:
        configure_logging(verbose=True)
        assert logging.getLogger("reference").level == logging.DEBUG and progress.enabled()
        logging.getLogger("simulator.cli").debug("a debug line")
        logging.getLogger("reference.models").warning("a warning")
        assert capsys.readouterr().err == "simulate: a debug line\nsimulate: warning: a warning\n"
        configure_logging(quiet=True)
        assert logging.getLogger("simulator").level == logging.WARNING and not progress.enabled()
        logging.getLogger("simulator.progress").info("hidden")
        assert capsys.readouterr().err == ""
        configure_logging(progress=False)
        assert logging.getLogger("simulator").level == logging.INFO and not progress.enabled()
    finally:
        configure_logging()


def test_cost_takes_model_flags_bare_names_and_writes_csv(tmp_path, capsys):
    js, cs = tmp_path / "c.json", tmp_path / "c.csv"
    code, out, err = _run(capsys, "cost", "--img-size", "16", "--num-classes", "4", "--hw", "npu_int8", "mcu_int8",
                          "npu_int8", "--json", str(js), "--csv", str(cs), "--quiet")
    assert code == 0, err
    assert "model vit_digits  16x16  65 tokens" in out and err == ""
    r = json.loads(js.read_text())
    assert r["tool"]["version"] and [h["npu"]["name"] for h in r["hardware"]] == ["npu_int8", "mcu_int8"]
    assert r["hardware"][1]["accelerator"]["spec"]["pe_array"]["dataflow"] == "output_stationary"
    rows = list(csv.DictReader(cs.open()))
    assert [row["accelerator"] for row in rows] == ["npu_int8", "mcu_int8"]
    assert float(rows[0]["cycles"]) == pytest.approx(r["hardware"][0]["per_image"]["cycles"])
