"""QuantizedGraph persistence: lossless round trip, atomic save, clear errors."""

from __future__ import annotations

import dataclasses
import json
import errno
import os
import zipfile

import numpy as np
import pytest

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig
from simulator.errors import InputError
from simulator.qgraph import FORMAT_VERSION, QuantizedGraph
from strategies import build_vit, random_images

CFG = dict(depth=2, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=4, in_chans=2,
           num_classes=5, init_values=0.1)


@pytest.fixture(scope="module")
def qvit() -> QuantizedGraph:
    rc = RecipeConfig(w_bits=4, a_bits=8, weight_calibration="minmax", act_calibration="percentile",
                      calib_images=8)
    q = quantize(build_vit(CFG, seed=3), random_images(CFG, 8, seed=3), rc, model_name="tiny")
    return dataclasses.replace(q, meta={**q.meta, "note": "x", "list": [1, 2.5, "a"]})


def _assert_same(a, b, path="qvit"):
    """Recursive equality that also requires array dtypes and container types to match."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: {type(b).__name__} instead of ndarray"
        assert a.dtype == b.dtype, f"{path}: dtype {b.dtype} != {a.dtype}"
        assert a.shape == b.shape and np.array_equal(a, b), f"{path}: values differ"
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), f"{path}: {type(b).__name__} != {type(a).__name__}"
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(b)} != {sorted(a)}"
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b), f"{path}: {type(b).__name__} != {type(a).__name__}"
        assert len(a) == len(b), f"{path}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, (bool, np.bool_)):
        assert bool(a) == b and isinstance(b, (bool, np.bool_)), f"{path}: {b!r} != {a!r}"
    elif isinstance(a, (int, np.integer)):
        assert isinstance(b, (int, np.integer)) and int(a) == int(b), f"{path}: {b!r} != {a!r}"
    elif isinstance(a, (float, np.floating)):
        assert isinstance(b, (float, np.floating)) and float(a) == float(b), f"{path}: {b!r} != {a!r}"
    else:
        assert a == b and type(a) is type(b), f"{path}: {b!r} != {a!r}"


def test_round_trip_preserves_every_array_and_field(qvit, tmp_path):
    path = tmp_path / "model.npz"
    qvit.save(path)
    loaded = QuantizedGraph.load(path)
    _assert_same(qvit, loaded)


def test_old_format_1_file_names_its_version(tmp_path):
    """A file of the removed per-model QuantizedViT (format_version 1) is refused naming the version."""
    msg = _expect_input_error(_npz_with_header(tmp_path / "v1.npz", json.dumps(
        {"format_version": 1, "tree": {"__class__": "QuantizedViT"}}).encode()))
    assert "format_version 1 is the old per-model QuantizedViT format" in msg


def test_round_trip_arrays_and_scalars(qvit, tmp_path):
    """The arrays (dtype, values) and scalar fields of every layer survive, whatever meta does."""
    qvit.save(tmp_path / "m.npz")
    loaded = QuantizedGraph.load(tmp_path / "m.npz")
    for name in ("quantizers", "params", "meta"):
        _assert_same(getattr(qvit, name), getattr(loaded, name), name)
    _assert_same(qvit.graph.params, loaded.graph.params, "graph.params")
    assert loaded.graph.ops == qvit.graph.ops and loaded.graph.outputs == qvit.graph.outputs
    p = loaded.params
    assert p["blocks.1.mlp.fc2"].w_q.dtype == np.int8 and p["blocks.0.mlp.fc1"].bias_q.dtype == np.int64
    assert p["blocks.0.attn.proj"].res_mult > 0 and p["head"].out_bits == qvit.params["head"].out_bits


def test_loaded_model_runs_identically(qvit, tmp_path):
    qvit.save(tmp_path / "m.npz")
    x = random_images(CFG, 3, seed=9)
    a = GraphFakeQuantExecutor(qvit).run(x)
    b = GraphFakeQuantExecutor(QuantizedGraph.load(tmp_path / "m.npz")).run(x)
    assert a.codes.keys() == b.codes.keys()
    for k in a.codes:
        assert np.array_equal(a.codes[k], b.codes[k]), k


def test_save_is_atomic_and_leaves_no_temp_files(qvit, tmp_path):
    path = tmp_path / "model.qvit"          # any name: no ".npz" appended
    qvit.save(path)
    qvit.save(path)                         # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["model.qvit"]


def test_failed_save_keeps_old_file_and_no_temp(qvit, tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    path.write_bytes(b"previous contents")

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(InputError, match="model.npz: cannot write: no space left on device"):
        qvit.save(path)
    assert path.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


# --- bad files --------------------------------------------------------------------------------
def _expect_input_error(path):
    with pytest.raises(InputError) as ei:
        QuantizedGraph.load(path)
    msg = str(ei.value)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def test_missing_file(tmp_path):
    assert "no such file" in _expect_input_error(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file(qvit, tmp_path, keep):
    good = tmp_path / "good.npz"
    qvit.save(good)
    data = good.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[: int(len(data) * keep)])
    _expect_input_error(bad)


@pytest.mark.parametrize("content", [b"garbage" * 100, b"\x93NUMPY\x01\x00" + b"x" * 50, b"PK\x03\x04" + b"\0" * 40,
                                     bytes(range(256))])
def test_garbage_file(tmp_path, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    _expect_input_error(bad)


def test_directory_instead_of_file(tmp_path):
    _expect_input_error(tmp_path)


def _npz_with_header(path, header_bytes: bytes, **arrays):
    np.savez(path, __header__=np.frombuffer(header_bytes, dtype=np.uint8), **arrays)
    return path


def test_npz_without_header(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.zeros(3))
    _expect_input_error(p)


def test_wrong_format_version(qvit, tmp_path):
    msg = _expect_input_error(_npz_with_header(tmp_path / "v.npz", json.dumps(
        {"format_version": FORMAT_VERSION + 1, "tree": {}}).encode()))
    assert "format_version" in msg


@pytest.mark.parametrize("header", [b"not json {", b"\xff\xfe", json.dumps({"format_version": FORMAT_VERSION}).encode(),
                                    json.dumps({"format_version": FORMAT_VERSION,
                                                "tree": {"__class__": "QuantizedGraph"}}).encode(),
                                    json.dumps({"format_version": FORMAT_VERSION,
                                                "tree": {"__class__": "Nope"}}).encode()])
def test_corrupt_header(tmp_path, header):
    _expect_input_error(_npz_with_header(tmp_path / "h.npz", header))


@pytest.mark.parametrize("header", [[1], {"format_version": FORMAT_VERSION, "tree": 5}],
                         ids=["json-list", "tree-not-a-model"])
def test_header_that_is_not_a_quantized_graph(tmp_path, header):
    """Valid JSON that does not describe a QuantizedGraph is a bad file, not a traceback or a wrong object."""
    _expect_input_error(_npz_with_header(tmp_path / "h.npz", json.dumps(header).encode()))


def test_missing_array_in_archive(qvit, tmp_path):
    good = tmp_path / "good.npz"
    qvit.save(good)
    bad = tmp_path / "missing.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if item.filename != "params.head.w_q.npy":
                zout.writestr(item, zin.read(item.filename))
    assert "params.head.w_q.npy" in zipfile.ZipFile(good).namelist()
    _expect_input_error(bad)


def test_str_and_pathlike_paths(qvit, tmp_path):
    """`save`/`load` take str and os.PathLike alike."""
    qvit.save(str(tmp_path / "s.npz"))
    _assert_same(qvit.params["head"], QuantizedGraph.load(tmp_path / "s.npz").params["head"])
    _assert_same(qvit.params["norm"], QuantizedGraph.load(str(tmp_path / "s.npz")).params["norm"])
