"""Golden vectors: export -> verify round trip on the default model, and every
kind of file damage (one flipped bit) reported with its location."""

from __future__ import annotations

import hashlib

import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simulator.cli import main
from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor
from simulator.vectors import Mismatch, verify_vectors
from simulator.vectors.export import _build, export_vectors, write_vector_set
from simulator.vectors.hexfile import decode_hex, encode_hex

N_IMAGES = 2


@pytest.fixture(scope="module")
def default_qvit():
    from reference import load_dataset, load_model, quantize
    from reference.recipes.config import RecipeConfig

    model = load_model()
    calib, _ = load_dataset("digits", model, split="calib", limit=16)
    images, _ = load_dataset("digits", model, split="test", limit=N_IMAGES)
    return quantize(model, calib, RecipeConfig(calib_images=16), model_name="vit_digits"), images


@pytest.fixture(scope="module")
def vector_set(default_qvit, tmp_path_factory):
    q, images = default_qvit
    out = tmp_path_factory.mktemp("vs") / "vectors"
    manifest = export_vectors(q, images, out)
    return out, manifest


def _flip(src: Path, dst: Path, rel: str, offset: int, bit: int = 0) -> None:
    shutil.copytree(src, dst)
    p = dst / rel
    data = bytearray(p.read_bytes())
    data[offset] ^= 1 << bit
    p.write_bytes(bytes(data))


def test_cli_round_trip_all_tensors_match(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe: static\nw_bits: 4\na_bits: 8\ncalib_images: 16\n")
    out = tmp_path / "v"
    assert main(["export-vectors", "--out", str(out), "--images", "2", "--recipe", str(recipe)]) == 0
    capsys.readouterr()
    assert main(["verify-vectors", str(out), "--no-progress"]) == 0     # the shared logging flags
    m = json.loads((out / "manifest.json").read_text())
    n = m["header"]["n_tensors"]
    assert capsys.readouterr().out.strip() == f"all {n} tensors match"
    assert m["header"]["tool_version"] == importlib.metadata.version("vit-intsim")
    assert m["header"]["recipe"] == "static_w4a8" and m["header"]["n_images"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    w = next(t for t in m["tensors"] if t["name"] == "params.blocks.0.attn.qkv.w_q")
    assert (w["bits"], w["hex_digits"], w["layer"]) == (4, 1, "blocks.0.attn.qkv")
    lines = (out / w["hex_file"]).read_text().splitlines()
    assert len(lines) == int(np.prod(w["shape"])) and all(len(s) == 1 for s in lines)


def test_manifest_lists_every_layer_and_boundary(vector_set, default_qvit):
    out, m = vector_set
    q, images = default_qvit
    names = {t["name"] for t in m["tensors"]}
    codes = IntegerExecutor(q).run(images).codes
    assert set(codes) <= names and "images" in names and "qvit.header" in names
    by_name = {lay["name"]: lay for lay in m["layers"]}
    qkv, split = by_name["blocks.0.attn.qkv"], by_name["blocks.0.attn.split_heads"]
    assert qkv["inputs"] == ["blocks.0.norm1"] and qkv["outputs"] == ["blocks.0.attn.qkv"]
    assert split["inputs"] == ["blocks.0.attn.qkv"] and split["outputs"] == ["blocks.0.q", "blocks.0.k", "blocks.0.v"]
    assert {"params.blocks.0.attn.qkv.w_q", "params.blocks.0.attn.qkv.bias_q", "params.blocks.0.attn.qkv.out_mult",
            "params.blocks.0.attn.qkv.out_shift"} <= set(qkv["params"])
    assert [lay["name"] for lay in m["layers"]] == [op.name for op in q.graph.ops]
    for lay in m["layers"]:
        assert set(lay["inputs"] + lay["params"] + lay["outputs"]) <= names
    with np.load(out / "vectors.npz") as z:
        np.testing.assert_array_equal(z["blocks.3.attn"], codes["blocks.3.attn"])
        np.testing.assert_array_equal(z["params.blocks.3.mlp.fc1.w_q"], q.params["blocks.3.mlp.fc1"].w_q)
    t = next(t for t in m["tensors"] if t["name"] == "blocks.2.x_mid")
    hexed = decode_hex((out / t["hex_file"]).read_bytes(), t["shape"], t["dtype"], t["bits"], t["encoding"], True)
    np.testing.assert_array_equal(hexed, codes["blocks.2.x_mid"])


@pytest.mark.parametrize("values, bits, text", [
    ([-1, 0, 7, -8], 4, "f\n0\n7\n8\n"),
    ([-3, 31, -32], 6, "3d\n1f\n20\n"),
    ([-1, 300], 16, "ffff\n012c\n"),
])
def test_hex_twos_complement_packing(values, bits, text):
    arr = np.array(values, np.int64)
    assert encode_hex(arr, bits, "twos_complement").decode() == text
    np.testing.assert_array_equal(decode_hex(text.encode(), arr.shape, np.int64, bits, "twos_complement", True), arr)


def _member(m, path, name):
    f = next(f for f in m["files"] if f["path"] == path)
    return next(e for e in f["members"] if e[0] == name)


def _flip_cases(m, root: Path):
    """(file, byte offset, what the report must contain) for each kind of damage."""
    _, w_start, w_size, _ = _member(m, "qvit.npz", "params.blocks.1.mlp.fc1.w_q")
    _, h_start, h_size, _ = _member(m, "qvit.npz", "__header__")
    _, a_start, a_size, _ = _member(m, "vectors.npz", "blocks.0.attn_out")
    qvit_len = (root / "qvit.npz").stat().st_size
    vec_len = (root / "vectors.npz").stat().st_size
    text = (root / "manifest.json").read_text()
    gelu = [t["name"] for t in m["tensors"]].index("blocks.1.gelu")
    return [
        ("manifest.json", text.index('"name": "blocks.1.gelu"') + 12, ["manifest.json", f"tensors[{gelu}]"]),
        ("manifest.json", text.index('"files"') - 1, ["manifest.json line"]),
        ("qvit.npz", w_start + w_size - 5, ["qvit.npz byte", "params.blocks.1.mlp.fc1.w_q", "flat index", "expected"]),
        ("qvit.npz", h_start + h_size // 2, ["qvit.npz byte", "qvit.header", "flat index"]),
        ("qvit.npz", w_start - 20, ["qvit.npz byte", "local file header", "params.blocks.1.mlp.fc1.w_q"]),
        ("qvit.npz", qvit_len - 40, ["qvit.npz byte", "central directory"]),
        ("vectors.npz", a_start + a_size - 3, ["vectors.npz byte", "blocks.0.attn_out", "index [", "expected"]),
        ("vectors.npz", a_start + 20, ["vectors.npz byte", "blocks.0.attn_out", ".npy header"]),
        ("vectors.npz", vec_len - 10, ["vectors.npz byte", "end of central directory"]),
        ("hex/blocks.2.gelu.hex", 301, ["hex/blocks.2.gelu.hex line 101", "flat index 100", "index [0, 0, 100]"]),
        ("hex/params.head.out_mult.hex", 0, ["hex/params.head.out_mult.hex line 1", "layer head"]),
        ("hex/images.hex", 9 * 5 + 2, ["hex/images.hex line 6", "flat index 5"]),
    ]


def test_every_flipped_bit_is_located(vector_set, tmp_path):
    src, m = vector_set
    assert verify_vectors(src) == f"all {m['header']['n_tensors']} tensors match"
    cases = _flip_cases(m, src)
    for i, (rel, offset, needles) in enumerate(cases):
        for bit in (0, 6):
            dst = tmp_path / f"c{i}_{bit}"
            _flip(src, dst, rel, offset, bit)
            with pytest.raises(Mismatch) as e:
                verify_vectors(dst)
            for needle in needles:
                assert needle in str(e.value), (rel, offset, bit, str(e.value))


def test_random_flips_in_every_file_kind_are_located(vector_set, tmp_path):
    src, m = vector_set
    rng = np.random.default_rng(10)
    for rel in ("manifest.json", "qvit.npz", "vectors.npz", "hex/blocks.4.fc1.hex", "hex/params.norm.beta_q.hex"):
        size = (src / rel).stat().st_size
        for k in range(4):
            dst = tmp_path / f"{rel.replace('/', '_')}{k}"
            _flip(src, dst, rel, int(rng.integers(size)), int(rng.integers(8)))
            with pytest.raises(Mismatch) as e:
                verify_vectors(dst)
            msg = str(e.value)
            assert msg.startswith(rel) and any(w in msg for w in (" line ", " byte", "bytes ", "tensors[", "files[",
                                                                 "layers[", "header")), msg


def test_rerun_difference_reports_layer_index_expected_got(default_qvit, tmp_path, capsys):
    q, images = default_qvit
    result = IntegerExecutor(q).run(images)
    codes = {k: v.copy() for k, v in result.codes.items()}
    codes["blocks.1.gelu"][1, 2, 3] += 1
    manifest, files = _build(q, images, codes, result.trace.extras)
    out = tmp_path / "v"
    write_vector_set(out, manifest, files)
    assert main(["verify-vectors", str(out)]) == 1
    stdout = capsys.readouterr().out
    got = result.codes["blocks.1.gelu"][1, 2, 3]
    flat = int(np.ravel_multi_index((1, 2, 3), codes["blocks.1.gelu"].shape))
    assert (f"layer blocks.1.mlp.act: tensor blocks.1.gelu: flat index {flat}, index [1, 2, 3]: "
            f"expected {got + 1}, got {got}") in stdout


def test_verify_bad_input_exit_2(capsys, tmp_path):
    for argv, needle in ((["verify-vectors", str(tmp_path / "nope")], "nope: no such directory"),
                         (["verify-vectors", str(tmp_path)], "no manifest.json"),
                         (["verify-vectors"], "DIR")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("simulate: error:") and needle in err[0]


def test_failed_export_leaves_nothing(default_qvit, tmp_path, monkeypatch):
    import simulator.vectors.export as ex

    q, images = default_qvit
    out = tmp_path / "v"

    def boom(_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex.mf, "dumps", boom)
    with pytest.raises(RuntimeError):
        export_vectors(q, images, out)
    assert list(tmp_path.iterdir()) == []


def test_vector_set_of_the_removed_legacy_walks_is_refused(vector_set, tmp_path, capsys):
    """A folder exported before the graph (its qvit.npz a format_version 1 QuantizedViT, every file hash
    intact) is one line, exit 2, naming the format and where old golden sets are checked."""
    import io

    from simulator.vectors import manifest as mf
    from simulator.vectors.npzfile import member_table

    src, m = vector_set
    dst = tmp_path / "old"
    shutil.copytree(src, dst)
    buf = io.BytesIO()
    np.savez(buf, __header__=np.frombuffer(json.dumps({"format_version": 1, "tree": {}}).encode(), np.uint8))
    data = buf.getvalue()
    (dst / "qvit.npz").write_bytes(data)
    plain = {"header": {k: v for k, v in m["header"].items() if k != "record_sha256"}}
    for section in ("files", "tensors", "layers"):
        plain[section] = [{k: v for k, v in r.items() if k != "record_sha256"} for r in m[section]]
    rec = next(f for f in plain["files"] if f["path"] == "qvit.npz")
    rec.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), members=member_table(data))
    (dst / "manifest.json").write_bytes(mf.dumps(mf.seal(plain)))
    assert main(["verify-vectors", str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"simulate: error: {dst}: exported by the legacy walks")
    assert "format_version 1 QuantizedViT" in err[0] and "scripts/verify_golden_on_graph.py" in err[0]


TINY = dict(depth=2, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=2, in_chans=3, num_classes=5,
            init_values=None)
EVERY_RECIPE = {
    "static": {"recipe": "static", "w_bits": 4, "a_bits": 8},
    "tsptq": {"recipe": "tsptq", "w_bits": 6, "a_bits": 6},
    "igq": {"recipe": "igq", "w_bits": 4, "a_bits": 4, "params": {"groups": 2}},
    "scalepredictor": {"recipe": "scalepredictor", "w_bits": 6, "a_bits": 6, "params": {"degree": 2}},
    "apq": {"recipe": "apq", "params": {"exit_heads": "distill", "exits_every": 1, "threshold": 0.3,
                                        "allocation": "uniform"}},
    "two_scaled+groups": {"recipe": "static", "w_bits": 4, "a_bits": 4,
                          "mechanisms": [{"two_scaled": {}}, {"groups": {"groups": 2}}]},
}


@pytest.mark.parametrize("name", list(EVERY_RECIPE))
def test_every_recipe_exports_and_verifies(name, tmp_path):
    """export-vectors -> verify-vectors round trip for every recipe (and a composed one) on the graph:
    its quantizer kinds' tensors, group maps and exit decisions included."""
    from reference import quantize
    from strategies import build_vit, random_images

    images = random_images(TINY, 20, seed=8)
    rc = {"weight_calibration": "minmax", "act_calibration": "minmax", "calib_images": 16, **EVERY_RECIPE[name]}
    q = quantize(build_vit(TINY, seed=8), images[:16], rc, model_name="tiny")
    m = export_vectors(q, images[16:], tmp_path / "v")
    assert verify_vectors(tmp_path / "v") == f"all {m['header']['n_tensors']} tensors match"
    names = {t["name"] for t in m["tensors"]}
    assert [lay["name"] for lay in m["layers"]] == [op.name for op in q.graph.ops]
    kinds = {qz.kind for qz in q.quantizers.values()}
    if "grouped" in kinds:
        assert any(n.endswith(".groups") for n in names)
    if name == "apq":
        assert {"exits.0.logits", "exits.0.confidence"} <= names
