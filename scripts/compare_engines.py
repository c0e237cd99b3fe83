"""Run recipes through the integer graph and compare with the legacy walks' recorded figures.

    python scripts/compare_engines.py [RECIPE ...] [--images N] [--out DIR] [--record FILE]

For each recipe (default: every YAML under configs/recipes) it runs the main
job (`simulate --recipe R --hw npu_int8 --json`) on the bundled model and
prints one row: top-1 of fake-quant (integer-only / float nonlinear) and
simulator, bit-exact count, GBOPs and npu_int8 cycles per image. With
``--record`` (default: docs/graph.md) it also compares each row with the
table recorded there from the legacy hand-written walks (commit 65784be, the
last one that had them; this script's earlier two-engine version) and says
whether every number is equal. Exit status 0 when every recorded row is equal.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("fakequant_integer", "fakequant_float_nonlinear", "simulator")
RECORD_ROW = re.compile(r"^\| (\S+) \| ([\d.]+ / [\d.]+ / [\d.]+) \| [\d.]+ / [\d.]+ / [\d.]+ \| "
                        r"(\d+/\d+) / \d+/\d+ \| ([\d.]+) \| ([\d,]+) / [\d,]+ \| yes \|$")


def _legacy_yaml(recipe: str, out: Path) -> str:
    """``recipe``, or a copy of its YAML in ``out`` with ``params.sensitivity: measured`` when it searches
    (igq BOP budget, apq threshold search): the legacy walks measured each candidate with a forward
    pass; the default since issue 15 is the second-order estimate (docs/recipes/igq.md, apq.md)."""
    import yaml
    path = ROOT / "configs" / "recipes" / f"{recipe}.yaml"
    if not path.exists():
        return recipe
    d = yaml.safe_load(path.read_text())
    p = d.get("params") or {}
    if (d.get("recipe") == "igq" and "bop_budget" in p) or (d.get("recipe") == "apq" and p.get("threshold") == "search"):
        copy = out / f"{recipe}.yaml"
        copy.write_text(yaml.safe_dump({**d, "params": {**p, "sensitivity": "measured"}}))
        return str(copy)
    return recipe


def _run(recipe: str, images: int | None, out: Path) -> dict:
    from simulator.cli import main

    js = out / f"{recipe}.json"
    argv = ["--recipe", _legacy_yaml(recipe, out), "--hw", "npu_int8", "--json", str(js), "--quiet"]
    if images:
        argv += ["--images", str(images)]
    code = main(argv)
    if code != 0:
        raise SystemExit(f"{recipe}: simulate exited {code}")
    return json.loads(js.read_text())


def _row(r: dict) -> tuple[str, str, str, str]:
    hw = r["hardware"][0]["per_image"]
    return (" / ".join(f"{r['top1'][k]:.2f}" for k in KEYS), f"{r['bit_exact_images']}/{r['images']}",
            f"{r['bops_per_image'] / 1e9:.4f}", f"{hw['cycles']:,.0f}")


def _recorded(path: Path) -> dict[str, tuple]:
    rows = {}
    for line in path.read_text().splitlines():
        m = RECORD_ROW.match(line.strip())
        if m:
            rows[m.group(1)] = m.groups()[1:]
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("recipes", nargs="*")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--record", default=str(ROOT / "docs" / "graph.md"))
    args = p.parse_args(argv)
    recipes = args.recipes or sorted(f.stem for f in (ROOT / "configs" / "recipes").glob("*.yaml"))
    out = Path(args.out or tempfile.mkdtemp(prefix="engines-"))
    out.mkdir(parents=True, exist_ok=True)
    record = _recorded(Path(args.record)) if args.record and not args.images else {}
    print("| recipe | top-1 fq-int / fq-float / sim | bit-exact | GBOPs | npu_int8 cycles | equal to legacy record |")
    print("|---|---|---|---|---|---|")
    all_equal = True
    for recipe in recipes:
        row = _row(_run(recipe, args.images, out))
        verdict = "–"
        if recipe in record:
            equal = row == record[recipe]
            all_equal &= equal
            verdict = "yes" if equal else f"NO (legacy: {' | '.join(record[recipe])})"
        print(f"| {recipe} | {' | '.join(row)} | {verdict} |", flush=True)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
