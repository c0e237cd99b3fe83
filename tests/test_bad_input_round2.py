"""Hardening, round two (issue 18): each mishandled case of the issue, through the CLI
where it was found. Bad input ends in one ``simulate: error:`` line, exit 2, no
warning and nothing left behind; accepted input has its stated conversion.

Sections: writers (OS errors, atomicity, umask, strict JSON), YAML limits,
the vectors folder as untrusted input, checkpoints, images, the rest.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from PIL import Image

import simulator.atomic_files as af
from simulator.cli import main
from simulator.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "reference" / "default_model" / "vit_digits.safetensors"
NPU = ROOT / "configs" / "npu_int8.yaml"
FAST_RECIPE = "recipe: static\ncalib_images: 16\n"


def _run(argv, capsys) -> tuple[int, str, str]:
    if not argv or argv[0] != "verify-vectors":
        argv = [*argv, "--quiet"]   # no progress lines: the error must be the only stderr line
    with warnings.catch_warnings(record=True) as caught:   # a warning would be a second stderr line
        warnings.simplefilter("always")
        code = main(argv)
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(argv, capsys, *needles) -> str:
    code, out, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("simulate: error:"), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _recipe(tmp: Path) -> str:
    p = tmp / "fast.yaml"
    p.write_text(FAST_RECIPE)
    return str(p)


def _os_error(code):
    def raise_(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return raise_


# ---------------------------------------------------------------- writers
@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system"),
                                          (errno.EACCES, "permission denied"),
                                          (errno.ENOSPC, "no space left on device")])
def test_json_into_unwritable_folder_fails_before_the_run(code, reason, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    monkeypatch.setattr(af.tempfile, "mkstemp", _os_error(code))
    line = _one_error(["--json", str(out / "r.json"), "--save-qvit", str(out / "q.npz"), "--no-progress"],
                      capsys, "--json", "r.json", reason)
    assert "cannot write" in line and _tree(tmp_path) == ["o"]


def test_json_onto_a_directory_leaves_no_qvit(tmp_path, capsys):
    (tmp_path / "r.json").mkdir()
    _one_error(["--json", str(tmp_path / "r.json"), "--save-qvit", str(tmp_path / "q.npz"), "--images", "2",
                "--no-progress"], capsys, "--json", "is a directory")
    assert _tree(tmp_path) == ["r.json"]


def test_save_qvit_on_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(np, "savez", _os_error(errno.ENOSPC))
    _one_error(["--save-qvit", str(tmp_path / "q.npz"), "--json", str(tmp_path / "r.json"), "--images", "2",
                "--recipe", _recipe(tmp_path), "--no-progress"],
               capsys, "--save-qvit", "q.npz", "no space left on device")
    assert _tree(tmp_path) == ["fast.yaml"]


def test_batch_writes_all_or_nothing(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(InputError, match="b.json: cannot write: no space left on device"):
        with af.Batch() as b:
            b.add(tmp_path / "a.npz", b"first")
            b.add(tmp_path / "b.json", full)
    assert _tree(tmp_path) == []
    with af.Batch() as b:
        b.add(tmp_path / "a.npz", b"first")
        b.add(tmp_path / "b.json", b"{}")
    assert _tree(tmp_path) == ["a.npz", "b.json"]


def test_export_vectors_read_only_folder_fails_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(af.tempfile, "mkstemp", _os_error(errno.EROFS))
    _one_error(["export-vectors", "--out", str(tmp_path / "v")], capsys, "--out", "read-only file system")
    assert _tree(tmp_path) == []


def test_export_vectors_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch):
    real_open, calls = open, []

    def filling_open(path, mode="r", *args, **kwargs):   # the third file of the set hits a full disk
        calls.append(path)
        if "w" in mode and len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    recipe = _recipe(tmp_path)
    monkeypatch.setattr(af, "open", filling_open, raising=False)
    _one_error(["export-vectors", "--out", str(tmp_path / "v"), "--images", "1", "--recipe", recipe],
               capsys, "--out", "no space left on device")
    assert _tree(tmp_path) == ["fast.yaml"]


def test_umask_is_read_without_changing_it():
    old = os.umask(0o037)
    try:
        assert af.umask() == 0o037 and af.file_mode() == 0o640 and af.dir_mode() == 0o740
        assert os.umask(0o037) == 0o037
    finally:
        os.umask(old)


def test_outputs_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        af.write_bytes(tmp_path / "f.bin", b"x")
        af.write_json(tmp_path / "r.json", {"a": 1})
        af.write_tree(tmp_path / "set", {"m.json": b"{}", "hex/a.hex": b"00\n"})
    finally:
        os.umask(old)
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777   # noqa: E731
    assert [mode("f.bin"), mode("r.json"), mode("set/m.json"), mode("set/hex/a.hex")] == [0o640] * 4
    assert [mode("set"), mode("set/hex")] == [0o750, 0o750]
    old = os.umask(0o002)
    try:
        af.write_bytes(tmp_path / "g.bin", b"x")
    finally:
        os.umask(old)
    assert mode("g.bin") == 0o664


def test_json_never_holds_infinity(tmp_path, capsys):
    hw = tmp_path / "slow.yaml"
    hw.write_text(NPU.read_text().replace("clock_mhz: 1000", "clock_mhz: 1.0e-300"))
    line = _one_error(["cost", "--hw", str(hw), "--json", str(tmp_path / "c.json")], capsys, "--json", "inf")
    assert "JSON" in line and not (tmp_path / "c.json").exists()
    with pytest.raises(InputError, match=r"x: a\[1\]\.b is nan"):
        af.dumps_json({"a": [1.0, {"b": float("nan")}]}, "x")
    assert af.dumps_json({"a": [1.0, 2]}, "x") == b'{\n  "a": [\n    1.0,\n    2\n  ]\n}\n'


def _tiny_sweep(tmp: Path, images: int = 8) -> Path:
    p = tmp / "tiny.yaml"
    p.write_text(yaml.safe_dump({"name": "tiny", "models": [{"name": "vit_digits", "images": images}],
                                 "recipes": [{"recipe": "static", "bits": ["w8a8"], "calib_images": 16}],
                                 "accelerators": ["npu_int8"]}))
    return p


def test_sweep_out_is_a_file(tmp_path, capsys):
    (tmp_path / "o").write_text("x")
    _one_error(["sweep", str(_tiny_sweep(tmp_path)), "--out", str(tmp_path / "o")], capsys,
               "--out", "is a file, expected a directory")


@pytest.mark.slow
def test_sweep_writes_only_under_out_and_recomputes_damaged_cache(tmp_path, capsys, monkeypatch):
    sweep = _tiny_sweep(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)   # a read-only working directory would do: nothing may land here
    out = tmp_path / "o"
    code, _, err = _run(["sweep", str(sweep), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert _tree(cwd) == [] and len(list((out / ".plans").glob("*.json"))) == 1
    first = json.loads((out / "results.json").read_text())
    runs = sorted((out / "cache" / "runs").glob("*.json"))
    points = sorted((out / "cache" / "points").glob("*.json"))
    for damage in ("[]", "{}", '{"run_key": 3}', "{trunc"):
        runs[0].write_text(damage)
        points[0].write_text(damage)
        next((out / ".plans").glob("*.json")).write_text(damage)
        code, stdout, err = _run(["sweep", str(sweep), "--out", str(out), "--no-progress"], capsys)
        assert code == 0 and err == "", (damage, err)
        assert "(1 computed, 0 cached)" in stdout
        again = json.loads((out / "results.json").read_text())
        strip = lambda r: [{k: v for k, v in p.items() if k != "run_seconds"} for p in r["points"]]  # noqa: E731
        assert strip(again) == strip(first)
    assert not [p for p in out.rglob(".*.tmp")]


# ---------------------------------------------------------------- YAML limits
_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, needle", [
    ("name: x\nmodels: [{name: vit_digits}]\nrecipes: [{recipe: static}]\naccelerators: [npu_int8]\n" + _LAUGHS,
     "aliases expand to more than"),
    ("name: x\nname: y\nmodels: [{name: vit_digits}]\nrecipes: [{recipe: static}]\naccelerators: [npu_int8]\n",
     "duplicate key 'name'"),
    ("a: &a [*a]\n", "recursive alias"),
    ("# " + "x" * (1 << 20) + "\n", "larger than 1048576 bytes"),
])
def test_sweep_yaml_limits(text, needle, tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    _one_error(["sweep", str(p), "--out", str(tmp_path / "o")], capsys, "s.yaml", needle)
    assert _tree(tmp_path) == ["s.yaml"]


@pytest.mark.parametrize("text, needle", [
    ("recipe: static\nw_bits: 8\nw_bits: 4\n", "duplicate key 'w_bits'"),
    ("recipe: static\nparams: " + _LAUGHS.replace("\n", "\n  ").replace("a: &a", "\n  a: &a"), "aliases expand"),
])
def test_recipe_yaml_limits(text, needle, tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    _one_error(["--recipe", str(p), "--images", "2", "--no-progress"], capsys, "r.yaml", "invalid YAML", needle)


# ---------------------------------------------------------------- vectors folder
@pytest.fixture(scope="module")
def vector_set(tmp_path_factory):
    from reference import load_dataset, load_model, quantize
    from reference.recipes.config import RecipeConfig
    from simulator.vectors.export import export_vectors

    model = load_model()
    calib, _ = load_dataset("digits", model, split="calib", limit=16)
    images, _ = load_dataset("digits", model, split="test", limit=1)
    q = quantize(model, calib, RecipeConfig(calib_images=16), model_name="vit_digits")
    out = tmp_path_factory.mktemp("vs") / "v"
    export_vectors(q, images, out)
    return out


def _reseal(src: Path, dst: Path, edit_manifest=None, edit_files=None) -> Path:
    """Copy a vector set, change it, and recompute every checksum, as a careful forger would."""
    from simulator.vectors import manifest as mf
    from simulator.vectors.npzfile import member_table

    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    if edit_files:
        edit_files(dst)
    if edit_manifest:
        edit_manifest(m)
    for f in m["files"]:
        p = dst / f["path"]
        if p.is_file() and not p.is_symlink() and ".." not in f["path"] and not f["path"].startswith("/"):
            import hashlib
            data = p.read_bytes()
            f["bytes"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            if "members" in f:
                f["members"] = member_table(data)
    strip = lambda r: {k: v for k, v in r.items() if k != "record_sha256"}   # noqa: E731
    m = mf.seal({"header": strip(m["header"]), **{s: [strip(r) for r in m[s]] for s in ("files", "tensors", "layers")}})
    (dst / "manifest.json").write_bytes(mf.dumps(m))
    return dst


def _retarget_hex(m, new_path):
    f = next(f for f in m["files"] if f["kind"] == "hex")
    t = next(t for t in m["tensors"] if t["hex_file"] == f["path"])
    f["path"] = t["hex_file"] = new_path


@pytest.mark.parametrize("target", ["../secret.hex", "ABS", "hex/../../secret.hex", "hex\\..\\x.hex", "./qvit.npz"])
def test_manifest_names_outside_the_folder_are_refused(target, vector_set, tmp_path, capsys):
    secret = tmp_path / "secret.hex"
    secret.write_text("TOP-SECRET-LINE\n")
    path = str(secret) if target == "ABS" else target
    vs = _reseal(vector_set, tmp_path / "v", edit_manifest=lambda m: _retarget_hex(m, path))
    line = _one_error(["verify-vectors", str(vs)], capsys, "manifest.json", "files[", "plain file name")
    assert "TOP-SECRET" not in line


def test_symlink_out_of_the_folder_is_refused_and_never_echoed(vector_set, tmp_path, capsys):
    secret = tmp_path / "secret.hex"
    secret.write_text("TOP-SECRET-LINE\n" * 10)

    def link(d):
        f = sorted((d / "hex").iterdir())[0]
        f.unlink()
        f.symlink_to(secret)

    vs = _reseal(vector_set, tmp_path / "v", edit_files=link)
    line = _one_error(["verify-vectors", str(vs)], capsys, "is a symlink")
    assert "TOP-SECRET" not in line


def test_a_damaged_hex_line_is_described_not_echoed(vector_set, tmp_path, capsys):
    vs = tmp_path / "v"
    shutil.copytree(vector_set, vs)
    f = sorted((vs / "hex").iterdir())[0]
    lines = f.read_bytes().split(b"\n")
    lines[0] = b"S" * len(lines[0])   # same size: located by content, not by length
    f.write_bytes(b"\n".join(lines))
    code, out, _ = _run(["verify-vectors", str(vs)], capsys)
    assert code == 1 and "SS" not in out and "line 1" in out and "not" in out and "hex digits" in out


def _edit_qvit_member(member, make):
    def edit(d):
        from simulator.vectors.npzfile import npy_payload, npz_bytes

        with np.load(d / "qvit.npz", allow_pickle=False) as z:
            payloads = {k: npy_payload(z[k]) for k in z.files}
            payloads[member] = make(z[member])
        (d / "qvit.npz").write_bytes(npz_bytes(payloads))
    return edit


@pytest.mark.parametrize("member, make, needle", [
    ("params.blocks.0.attn.qkv.w_q", lambda a: npy_payload_of(a[:, :-1]), "blocks.0.attn.qkv.w_q: expected shape"),
    ("params.blocks.0.attn.qkv.w_q", lambda a: npy_payload_of(np.zeros(0, np.int8)),
     "blocks.0.attn.qkv.w_q: expected shape"),
    ("params.blocks.0.attn.qkv.w_q", lambda a: npy_payload_of(a.astype(np.float32)), "expected int8 codes"),
    ("params.head.out_shift", lambda a: npy_payload_of(a + 100), "head.out_shift: expected integers in [0, 62]"),
    ("params.blocks.1.mlp.fc2.bias_q", lambda a: b"garbage, not an npy payload",
     "blocks.1.mlp.fc2.bias_q: expected an array"),
    ("params.blocks.1.mlp.fc2.bias_q", lambda a: b"", "blocks.1.mlp.fc2.bias_q: expected an array"),
])
def test_resealed_qvit_members_are_checked_before_any_kernel(member, make, needle, vector_set, tmp_path, capsys,
                                                             monkeypatch):
    import simulator.kernels as kernels_pkg   # noqa: F401   (the GEMM module must not be reached)

    vs = _reseal(vector_set, tmp_path / "v", edit_files=_edit_qvit_member(member, make))
    calls = []
    monkeypatch.setattr(torch, "_int_mm", lambda *a: calls.append(a))
    _one_error(["verify-vectors", str(vs)], capsys, "qvit.npz", needle)
    assert calls == []


def npy_payload_of(arr):
    from simulator.vectors.npzfile import npy_payload

    return npy_payload(arr)


# ---------------------------------------------------------------- checkpoints
def _checkpoint(tmp: Path, edit) -> str:
    sd = {k: v.float().clone() for k, v in safetensors.torch.load_file(str(WEIGHTS)).items()}
    edit(sd)
    p = tmp / "ckpt.safetensors"
    safetensors.torch.save_file(sd, str(p))
    return str(p)


@pytest.mark.parametrize("edit, needles", [
    (lambda sd: sd["blocks.0.attn.qkv.weight"].__setitem__((2, 3), float("nan")),
     ("'blocks.0.attn.qkv.weight'", "nan at index [2, 3]", "expected finite weights")),
    (lambda sd: sd["blocks.1.mlp.fc1.weight"].__setitem__((0, 0), float("-inf")),
     ("'blocks.1.mlp.fc1.weight'", "-inf")),
    (lambda sd: sd["head.bias"].__setitem__(0, float("nan")), ("'head.bias'", "nan at index [0]")),
])
def test_non_finite_checkpoint_names_the_first_tensor(edit, needles, tmp_path, capsys):
    _one_error(["--checkpoint", _checkpoint(tmp_path, edit), "--images", "2", "--json", str(tmp_path / "r.json"),
                "--no-progress"], capsys, "ckpt.safetensors", *needles)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("edit, needles", [
    (lambda sd: sd["blocks.0.mlp.fc2.weight"].__setitem__((0, 0), 1e30),
     ("layer blocks.1.norm1", "overflows float32")),
    (lambda sd: [v.zero_() for v in sd.values()], ("layer patch_embed", "exactly 0", "calibration images")),
    (lambda sd: (sd["blocks.1.mlp.fc1.weight"].zero_(), sd["blocks.1.mlp.fc1.bias"].zero_()),
     ("layer blocks.1.mlp.fc1", "no quantization scale")),
])
def test_degenerate_checkpoint_names_the_layer(edit, needles, tmp_path, capsys):
    _one_error(["--checkpoint", _checkpoint(tmp_path, edit), "--images", "2", "--recipe", _recipe(tmp_path),
                "--no-progress"], capsys, *needles)


def test_dyadic_range_errors_become_one_line_naming_the_model(monkeypatch):
    from reference import load_dataset, load_model, quantize
    from reference.recipes.config import RecipeConfig
    from reference.recipes import static

    model = load_model()
    calib, _ = load_dataset("digits", model, split="calib", limit=16)
    real = static.dyadic
    monkeypatch.setattr(static, "dyadic", lambda r, *a: real(np.asarray(r) * 2.0 ** 40, *a))
    with pytest.raises(InputError, match=r"model m: recipe static_w8a8: a rescale factor of .* does not fit a "
                                         r"31-bit dyadic multiplier"):
        quantize(model, calib, RecipeConfig(calib_images=16), model_name="m")


# ---------------------------------------------------------------- images
def _png_claiming(w: int, h: int) -> bytes:
    """A 1x1 PNG whose header says w x h (the size check must not decode a pixel)."""
    import io

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _folder(tmp: Path, files: dict) -> str:
    root = tmp / "imgs"
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Image.Image):
            content.save(p)
        else:
            p.write_bytes(content)
    return str(root)


@pytest.mark.parametrize("w, h, flags, needle", [
    (20000, 20000, [], "over the limit of 89478485"),
    (10000, 10000, [], "10000x10000 = 100000000 pixels"),
    (8, 8, ["--max-image-pixels", "63"], "8x8 = 64 pixels, over the limit of 63"),
])
def test_pixel_limit_is_ours_and_settable(w, h, flags, needle, tmp_path, capsys):
    img = _png_claiming(w, h) if w > 8 else None
    data = _folder(tmp_path, {"a/x.png": img if img else Image.new("L", (8, 8))})
    line = _one_error(["--data", data, "--images", "1", *flags, "--no-progress"], capsys, "x.png", needle)
    assert "--max-image-pixels" in line


def test_pixel_limit_flag_lets_a_large_image_in(tmp_path):
    from reference.data import _read_image

    p = tmp_path / "big.png"
    Image.new("L", (300, 300), 7).save(p)
    with pytest.raises(InputError, match="90000 pixels, over the limit of 89999"):
        _read_image(p, "L", max_pixels=89_999)
    assert np.asarray(_read_image(p, "L", max_pixels=90_000)).max() == 7


def test_pils_own_bomb_check_is_replaced_by_ours(tmp_path, monkeypatch):
    """No DecompressionBombWarning/Error from PIL: the one limit is --max-image-pixels."""
    from reference.data import _read_image

    p = tmp_path / "big.png"
    Image.new("L", (300, 300), 9).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # PIL would warn above 1000, raise above 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.asarray(_read_image(p, "L", max_pixels=90_000)).max() == 9
    assert Image.MAX_IMAGE_PIXELS == 1000   # restored


def test_max_image_pixels_must_be_positive(capsys):
    _one_error(["--max-image-pixels", "0"], capsys, "--max-image-pixels", "positive")


def test_16bit_png_scaled_not_saturated(tmp_path):
    from reference.data import _read_image

    values = np.array([[0, 257, 32767, 32768], [65535, 1000, 40000, 65278]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    got = np.asarray(_read_image(tmp_path / "g.png", "L"))
    expect = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(got, expect)
    assert got.tolist() == [[0, 1, 127, 128], [255, 4, 156, 254]]
    rgb = np.asarray(_read_image(tmp_path / "g.png", "RGB"))
    np.testing.assert_array_equal(rgb, np.repeat(expect[..., None], 3, axis=2))


def test_float_tiff_scaled_and_nan_refused(tmp_path, capsys):
    from reference.data import _read_image

    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(tmp_path / "f.tif")
    assert np.asarray(_read_image(tmp_path / "f.tif", "L")).tolist() == [[0, 128], [255, 64]]
    Image.fromarray(np.array([[0.0, 2.0]], np.float32)).save(tmp_path / "hi.tif")
    with pytest.raises(InputError, match=r"hi.tif: float image with values in \[0, 2\]; expected values in \[0, 1\]"):
        _read_image(tmp_path / "hi.tif", "L")
    data = _folder(tmp_path, {"a/nan.tif": Image.fromarray(np.full((8, 8), np.nan, np.float32))})
    _one_error(["--data", data, "--images", "1", "--no-progress"], capsys, "nan.tif", "non-finite")


def test_palette_and_cmyk_are_converted(tmp_path):
    from reference.data import _read_image

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    expect = np.asarray(pal.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(_read_image(tmp_path / "p.png", "RGB")), expect)
    np.testing.assert_array_equal(np.asarray(_read_image(tmp_path / "p.png", "L")),
                                  np.asarray(pal.convert("RGB").convert("L")))
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8), "CMYK")
    cmyk.save(tmp_path / "c.tif")
    assert np.asarray(_read_image(tmp_path / "c.tif", "RGB")).tolist() == [[[255, 255, 255], [0, 255, 255],
                                                                             [0, 0, 0]]]


def test_dangling_symlink_is_reported(tmp_path, capsys):
    data = _folder(tmp_path, {"a/ok.png": Image.new("L", (8, 8))})
    (Path(data) / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    _one_error(["--data", data, "--images", "1", "--no-progress"], capsys, "gone.png", "dangling symlink")


@pytest.mark.parametrize("what", ["file", "class_dir"])
def test_symlink_outside_the_folder_is_reported(what, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("L", (8, 8)).save(outside / "o.png")
    data = _folder(tmp_path, {"a/ok.png": Image.new("L", (8, 8))})
    link = Path(data) / "a" / "o.png" if what == "file" else Path(data) / "b"
    link.symlink_to(outside / "o.png" if what == "file" else outside)
    _one_error(["--data", data, "--images", "1", "--no-progress"], capsys, "outside the image folder")


def test_symlink_inside_the_folder_is_followed(tmp_path):
    from reference.data import _find_class_images

    data = Path(_folder(tmp_path, {"a/ok.png": Image.new("L", (8, 8))}))
    (data / "a" / "same.png").symlink_to(data / "a" / "ok.png")
    samples, classes = _find_class_images(data)
    assert [p.name for p, _ in samples] == ["ok.png", "same.png"] and classes == ["a"]


# ---------------------------------------------------------------- the rest
@pytest.mark.parametrize("after", ['"3"', '{"a": 1}', "[1.5]", "[true]", "3", "null"])
def test_apq_exit_head_metadata_types(after, tmp_path):
    from reference.exits import load_exit_heads
    from reference.models import load_model

    p = tmp_path / "heads.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(p), metadata={"after_blocks": after, "info": "{}"})
    with pytest.raises(InputError, match=r"heads.safetensors: metadata after_blocks: expected a JSON list of "
                                         r"integers"):
        load_exit_heads(p, load_model())


@pytest.mark.parametrize("flag, value, needle", [("--residual-bits", "-3", "--residual-bits: expected 8..24, got -3"),
                                                  ("--edge-bits", "99", "--edge-bits: expected 0..8, got 99"),
                                                  ("--residual-bits", "40", "--residual-bits")])
def test_cost_bit_flags_are_named(flag, value, needle, capsys):
    line = _one_error(["cost", "--hw", str(NPU), flag, value], capsys, needle)
    assert "trace layer" not in line
