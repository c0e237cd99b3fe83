"""Check every input before anything heavy is imported or computed.

`simulate` (and its subcommands) call these checks first, with only numpy,
PyYAML and the standard library loaded, so that a bad argument, recipe,
accelerator, checkpoint, image folder or output path fails in well under
two seconds with the usual one line ``simulate: error: <what>: <expected>``.
torch, timm and numba (several seconds to import) come afterwards.

What can be checked without torch is checked here:

* numbers and choices of the flags (`check_flags`);
* the recipe YAML, params included (`reference.recipes.config` is torch-free);
* accelerator YAMLs, bare names resolved under ``configs/``, and their
  identity (`hwmodels.load_distinct`: one name, one content);
* checkpoints: the file's type, and for ``.safetensors`` the header (tensor
  names and shapes, file length), compared with the bundled model's
  architecture or the ``--num-classes`` asked for (`check_checkpoint`);
* image folders: layout, class count, image files (`scan_folder`); the
  ``digits`` set against a model that cannot read 1x8x8 images;
* outputs: the directory exists and is writable, the path is not a directory.

The checks that need the built model (timm names, a ``.pth`` checkpoint's
keys, image sizes against a timm model's input) run right after it is built,
still before calibration. Part of the CLI's composition root.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from simulator.bundled_models import BUILTIN_DATASETS, DEFAULT_MODEL, bundled_json_path, default_data
from simulator.errors import InputError

__all__ = ["check_flags", "check_outputs", "check_checkpoint", "scan_folder", "FolderInfo", "default_model_json",
           "check_data_for_model", "IMAGE_EXTENSIONS"]

DEFAULT_MODEL_JSON = bundled_json_path(DEFAULT_MODEL)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_SAFETENSORS_MAX_HEADER = 100 << 20


def default_model_json() -> dict:
    """The bundled model's JSON (architecture + data config), read without torch."""
    try:
        return json.loads(DEFAULT_MODEL_JSON.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{DEFAULT_MODEL_JSON}: not a readable JSON config ({type(e).__name__})") from None


# ------------------------------------------------------------------ flags


def _positive(args, name: str) -> None:
    v = getattr(args, name, None)
    if v is not None and v <= 0:
        raise InputError(f"--{name.replace('_', '-')}: expected a positive integer, got {v}")


def check_flags(args) -> None:
    """Numbers and lists of the model/data flags (argparse has checked the types)."""
    for name in ("images", "batch_size", "num_classes", "img_size", "threads", "reference_images"):
        _positive(args, name)
    check_cluster_address(getattr(args, "cluster", None))
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, 3):
            raise InputError(f"{flag}: expected 1 or 3 numbers (one per channel), got {len(values)}")
    if std is not None and any(not s > 0 for s in std):
        raise InputError(f"--std: expected positive numbers, got {' '.join(map(str, std))}")
    if mean is not None and std is not None and len(mean) != len(std):
        raise InputError(f"--mean/--std: expected the same number of values, got {len(mean)} and {len(std)}")
    crop = getattr(args, "crop_pct", None)
    if crop is not None and not 0 < crop <= 1:
        raise InputError(f"--crop-pct: expected a number in (0, 1], got {crop}")


_CLUSTER_ADDRESS = re.compile(r"^(?:(?:tcp|tls|inproc|ucx|ws|wss)://)?[^\s/:]+(?::\d+)?(?:/[^\s]*)?$")


def check_cluster_address(cluster: str | None) -> None:
    """``--cluster``: 'local' or a Dask scheduler address (``tcp://host:8786``, ``host:8786``); whether a
    scheduler answers there is found out when connecting (`simulator.dask_client`)."""
    if cluster is None or cluster == "local":
        return
    if not _CLUSTER_ADDRESS.match(cluster):
        raise InputError(f"--cluster {cluster!r}: expected 'local' or a Dask scheduler address such as "
                         "tcp://host:8786")


def check_outputs(pairs) -> None:
    """``(flag, path)`` pairs: the parent directory exists and is writable, the path is no directory."""
    for flag, path in pairs:
        if path is None:
            continue
        target = Path(path)
        parent = target.resolve().parent
        if not parent.is_dir():
            raise InputError(f"{flag} {path}: directory {target.parent} does not exist")
        if target.is_dir():
            raise InputError(f"{flag} {path}: is a directory, expected a file path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path}: directory {target.parent} is not writable")
        if target.exists() and not os.access(target, os.W_OK):
            raise InputError(f"{flag} {path}: file exists and is not writable")


# ------------------------------------------------------------------ checkpoints


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header; truncation and garbage are `InputError`s."""
    bad = f"{path}: cannot read checkpoint (truncated or corrupted?)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{bad}: {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _SAFETENSORS_MAX_HEADER):
                raise InputError(f"{bad}: header of {n} bytes in a {size}-byte file")
            header = json.loads(f.read(n))
    except OSError as e:
        raise InputError(f"{path}: cannot read checkpoint ({e.strerror or type(e).__name__})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{bad}: header is not JSON") from None
    if not isinstance(header, dict):
        raise InputError(f"{bad}: header is not a JSON object")
    shapes, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(d) for d in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, ValueError, IndexError):
            raise InputError(f"{bad}: header entry {name!r}") from None
    if 8 + n + end > size:
        raise InputError(f"{bad}: {size} bytes, the header needs {8 + n + end}")
    if not shapes:
        raise InputError(f"{path}: not a state dict (no tensors)")
    return shapes


def _expected_default_shapes(num_classes: int | None, img_size: int | None) -> dict[str, tuple[int, ...]]:
    """A few key shapes of the bundled architecture (with --num-classes/--img-size applied)."""
    kw = default_model_json()["model_kwargs"]
    d, p, c = kw["embed_dim"], kw["patch_size"], kw["in_chans"]
    classes = num_classes or kw["num_classes"]
    side = (img_size or kw["img_size"]) // p
    return {"patch_embed.proj.weight": (d, c, p, p), "pos_embed": (1, side * side + int(kw.get("class_token", True)), d),
            "head.weight": (classes, d)}


def check_checkpoint(path: str | None, model: str | None, num_classes: int | None = None,
                     img_size: int | None = None) -> dict[str, tuple[int, ...]] | None:
    """Check a checkpoint file without torch; returns the safetensors shapes (None for pickles)."""
    if path is None:
        return None
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _CHECKPOINT_SUFFIXES:
        raise InputError(f"{p}: unsupported checkpoint type {suffix or '(none)'!r}; "
                         "expected .safetensors, .pth, .pt or .bin")
    if not p.is_file():
        raise InputError(f"{p}: checkpoint file not found")
    if suffix != ".safetensors":
        try:
            with open(p, "rb") as f:
                magic = f.read(2)
        except OSError as e:
            raise InputError(f"{p}: cannot read checkpoint ({e.strerror or type(e).__name__})") from None
        if not (zipfile.is_zipfile(p) or magic[:1] == b"\x80"):
            raise InputError(f"{p}: cannot read checkpoint (truncated or corrupted?): not a torch.save file")
        return None
    shapes = _safetensors_shapes(p)
    head = shapes.get("head.weight")
    if model in (None, DEFAULT_MODEL):
        for key, want in _expected_default_shapes(num_classes, img_size).items():
            have = shapes.get(key)
            if have is None:
                raise InputError(f"{p}: missing key {key!r}")
            if have != want:
                hint = f"; pass --num-classes {have[0]}" if key == "head.weight" and have[1:] == want[1:] else ""
                raise InputError(f"{p}: key {key!r} has shape {have}, model expects {want}{hint}")
    elif num_classes is not None and head is not None and head[0] != num_classes:
        raise InputError(f"{p}: key 'head.weight' has {head[0]} classes, --num-classes is {num_classes}")
    return shapes


# ------------------------------------------------------------------ images


@dataclass(frozen=True)
class FolderInfo:
    """What an ImageFolder holds, from its listing alone."""

    root: str
    classes: tuple[str, ...]
    n_images: int
    first_image: str


def scan_folder(spec: str | None, flag: str = "--data") -> FolderInfo | None:
    """None for a built-in dataset; else the folder's classes and image count (layout errors raised)."""
    if spec is None or spec in BUILTIN_DATASETS:
        return None
    root = Path(spec)
    if not root.exists():
        raise InputError(f"{root}: image folder not found ({flag})")
    if not root.is_dir():
        raise InputError(f"{root}: expected a directory with one sub-directory per class ({flag})")
    try:
        classes = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise InputError(f"{root}: no class sub-directories (expected <root>/<class>/<image>)")
        n, first = 0, None
        for name in classes:
            for f in sorted((root / name).rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                    n += 1
                    first = first or str(f)
    except OSError as e:
        raise InputError(f"{root}: cannot read image folder ({e.strerror or e})") from None
    if not n:
        raise InputError(f"{root}: no image files in the class sub-directories "
                         f"(expected extensions {', '.join(IMAGE_EXTENSIONS)})")
    return FolderInfo(str(root), tuple(classes), n, first)


def check_data_for_model(data: str | None, model: str | None, img_size: int | None) -> None:
    """A built-in dataset is read only by its bundled model at its own size (digits: 1x8x8 for
    vit_digits; clutter: 1x56x56 for vit_clutter); data None is the model's own dataset."""
    if data is None:
        data = default_data(model)
    if data == "clutter":
        if model != "vit_clutter":
            raise InputError(f"dataset 'clutter' has 1x56x56 grayscale images but --model {model or DEFAULT_MODEL} "
                             "expects other input; use --model vit_clutter or pass an ImageFolder path (--data)")
        if img_size is not None and img_size != 56:
            raise InputError(f"--img-size {img_size}: dataset 'clutter' has 56x56 images; pass an ImageFolder (--data)")
        return
    if data != "digits":
        return
    if model not in (None, DEFAULT_MODEL):
        raise InputError(f"dataset 'digits' has 1x8x8 grayscale images but --model {model} expects RGB input; "
                         "use the default model 'vit_digits' or pass an ImageFolder path (--data)")
    if img_size is not None and img_size != default_model_json()["model_kwargs"]["img_size"]:
        raise InputError(f"--img-size {img_size}: dataset 'digits' has 8x8 images; pass an ImageFolder (--data)")
