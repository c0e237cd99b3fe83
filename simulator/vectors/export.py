"""Write a golden vector set for RTL testbenches (``simulate export-vectors``).

``DIR/`` holds::

    manifest.json        records with checksums (see `simulator.vectors.manifest`)
    qvit.npz             the frozen QuantizedGraph (deterministic npz, loads with QuantizedGraph.load)
    vectors.npz          every tensor, one member per tensor name
    hex/<name>.hex       the same tensor as a $readmemh file (see `simulator.vectors.hexfile`)

Everything is written into a hidden temp directory next to ``DIR`` and renamed
onto ``DIR`` at the end, so an interrupted or failed export leaves nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from simulator.atomic_files import check_writable, write_tree
from simulator.errors import InputError
from simulator.qgraph import QuantizedGraph
from simulator.vectors import manifest as mf
from simulator.vectors.hexfile import encode_hex, hex_digits
from simulator.vectors.npzfile import member_table, npy_payload, npz_bytes, payload_array
from simulator.vectors.tensors import collect_tensors, layer_records

__all__ = ["export_vectors", "export_main", "tool_version", "qvit_payloads", "qvit_member_tensor", "qvit_header_array", "DEFAULT_IMAGES"]

DEFAULT_IMAGES = 4
QVIT_FILE, VECTORS_FILE, HEX_DIR = "qvit.npz", "vectors.npz", "hex"


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vit-intsim")
    except PackageNotFoundError:
        return "unknown (not installed)"


def qvit_payloads(q: QuantizedGraph) -> dict[str, bytes]:
    """`QuantizedGraph.save`'s members (arrays and the JSON ``__header__``) as ``.npy`` payloads."""
    buf = io.BytesIO()
    q.npz_writer()(buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: npy_payload(z[k]) for k in z.files}


def qvit_member_tensor(member: str) -> str:
    """The tensor holding a copy of a qvit.npz member (its JSON header is ``qvit.header``, uint8;
    the integer params ``params.<op>.<field>`` are tensors of the same name; the float graph and the
    quantizers' scales have no second copy)."""
    return "qvit.header" if member == "__header__" else member


def qvit_header_array(payloads: dict[str, bytes]) -> np.ndarray:
    return payload_array(payloads["__header__"])


def _file_record(path: str, kind: str, data: bytes, **extra) -> dict:
    return {"path": path, "kind": kind, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}


def _build(q: QuantizedGraph, images: np.ndarray, codes: dict, extras: dict):
    """(manifest, {relative path: bytes}) of a vector set."""
    qvit = qvit_payloads(q)
    tensors = collect_tensors(q, images, codes, extras, qvit_header_array(qvit))
    names = {t.name for t in tensors}
    layers = layer_records(q, names)
    owner = {}
    for lay in layers:
        for n in lay["outputs"] + lay["params"]:
            owner.setdefault(n, lay["name"])
    files = {QVIT_FILE: npz_bytes(qvit),
             VECTORS_FILE: npz_bytes({t.name: npy_payload(t.array) for t in tensors})}
    records = []
    for t in tensors:
        hex_path = f"{HEX_DIR}/{t.name}.hex"
        files[hex_path] = encode_hex(t.array, t.bits, t.encoding)
        records.append({"name": t.name, "role": t.role, "layer": owner.get(t.name), "shape": list(t.array.shape),
                        "dtype": t.array.dtype.str, "bits": t.bits, "signed": t.signed, "encoding": t.encoding,
                        "bits_source": t.bits_source, "hex_file": hex_path,
                        "hex_digits": hex_digits(t.bits, t.encoding), "npz_member": t.name,
                        "sha256": mf.tensor_sha256(t.array)})
    file_records = [_file_record(p, "hex" if p.startswith(HEX_DIR) else "npz", d) for p, d in files.items()]
    for r in file_records[:2]:
        r["members"] = member_table(files[r["path"]])
    file_records[0]["kind"] = "qvit"
    header = {"format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "tool": "vit-intsim",
              "tool_version": tool_version(), "model": q.meta.get("model"), "recipe": q.meta.get("label"),
              "n_images": int(len(images)), "n_tensors": len(records), "n_files": len(file_records),
              "element_order": "C (row-major), batch first; hex line i+1 = flat element i"}
    manifest = mf.seal({"header": header, "files": file_records, "tensors": records, "layers": layers})
    return manifest, files


def export_vectors(q: QuantizedGraph, images: np.ndarray, out_dir: str | os.PathLike) -> dict:
    """Run the integer executor on ``images`` and write the vector set to ``out_dir`` (must not exist)."""
    from simulator.int_ops import GraphIntegerExecutor

    out = Path(out_dir)
    if out.exists():
        raise InputError(f"--out {out}: already exists; choose a new directory")
    if not out.resolve().parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    result = GraphIntegerExecutor(q).run(images)
    manifest, files = _build(q, images, result.codes, result.trace.extras)
    write_vector_set(out, manifest, files)
    return manifest


def write_vector_set(out: Path, manifest: dict, files: dict[str, bytes]) -> None:
    """Write into a hidden temp directory beside ``out``, then rename it to ``out`` (`atomic_files.write_tree`)."""
    write_tree(out, {**files, mf.MANIFEST: mf.dumps(manifest)}, f"--out {out}")


def _parser():
    from simulator.cli import _Parser, add_image_limit_flag, add_logging_arguments, add_model_arguments

    p = _Parser(prog="simulate export-vectors",
                description="Write every layer's integer tensors (npz + $readmemh hex + manifest) for RTL testbenches.")
    p.add_argument("--out", required=True, metavar="DIR", help="new directory to create")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help=f"images to export, a seed-0 random subset of the test images (default {DEFAULT_IMAGES})")
    add_model_arguments(p)
    add_logging_arguments(p)
    add_image_limit_flag(p)
    return p


def export_main(argv: list[str]) -> int:
    """``simulate export-vectors --out DIR [--images N] [--recipe R] [--model/--checkpoint/--data/--calib]``."""
    from simulator.cli import quantize_from_args

    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.images <= 0:
        raise InputError(f"--images: expected a positive integer, got {args.images}")
    if out.exists():
        raise InputError(f"--out {out}: already exists; choose a new directory")
    if not out.resolve().parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    check_writable(out.parent / f".{out.name}", f"--out {out}")   # a read-only folder fails before the run
    qvit, images = quantize_from_args(args, args.images)
    manifest = export_vectors(qvit, images, out)
    h = manifest["header"]
    print(f"wrote {h['n_tensors']} tensors ({h['n_images']} images, {len(manifest['layers'])} layers, "
          f"{h['n_files']} files) to {out}")
    return 0
