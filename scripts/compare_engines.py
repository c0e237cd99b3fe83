"""Run recipes through both engines (`simulate --engine legacy|graph`) and compare what they print.

    python scripts/compare_engines.py [RECIPE ...] [--images N] [--out DIR]

For each recipe (default: every YAML under configs/recipes) it runs the main
job twice on the bundled model with `--hw npu_int8 --json`, then prints one
row: top-1 of each executor under each engine, bit-exact counts, BOPs and
npu_int8 cycles per image, and whether every number is equal. This is the
evidence that the README / docs tables reproduce on the integer graph before
the graph becomes the default (issue 13). Exit status 0 when every row is equal.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("fp32", "fakequant_integer", "fakequant_float_nonlinear", "simulator")


def _run(recipe: str, engine: str, images: int | None, out: Path) -> dict:
    from simulator.cli import main

    js = out / f"{recipe}.{engine}.json"
    argv = ["--recipe", recipe, "--engine", engine, "--hw", "npu_int8", "--json", str(js), "--quiet"]
    if images:
        argv += ["--images", str(images)]
    code = main(argv)
    if code != 0:
        raise SystemExit(f"{recipe} ({engine}): simulate exited {code}")
    return json.loads(js.read_text())


def _facts(r: dict) -> tuple:
    hw = r["hardware"][0]["per_image"]
    return (tuple(round(r["top1"][k], 6) for k in KEYS), r["bit_exact_images"], r["images"],
            r["bops_per_image"], hw["cycles"])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("recipes", nargs="*")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    recipes = args.recipes or sorted(f.stem for f in (ROOT / "configs" / "recipes").glob("*.yaml"))
    out = Path(args.out or tempfile.mkdtemp(prefix="engines-"))
    out.mkdir(parents=True, exist_ok=True)
    print("| recipe | legacy top-1 fq-int / fq-float / sim | graph top-1 fq-int / fq-float / sim | bit-exact "
          "legacy / graph | GBOPs | npu_int8 cycles legacy / graph | equal |")
    print("|---|---|---|---|---|---|---|")
    all_equal = True
    for recipe in recipes:
        try:
            legacy = _run(recipe, "legacy", args.images, out)
        except SystemExit as e:
            print(f"| {recipe} | {e} | | | | | – |")
            continue
        graph = _run(recipe, "graph", args.images, out)
        fl, fg = _facts(legacy), _facts(graph)
        equal = fl == fg
        all_equal &= equal
        t = lambda f: " / ".join(f"{v:.2f}" for v in f[0][1:])   # noqa: E731
        print(f"| {recipe} | {t(fl)} | {t(fg)} | {fl[1]}/{fl[2]} / {fg[1]}/{fg[2]} | {fl[3] / 1e9:.4f} | "
              f"{fl[4]:,.0f} / {fg[4]:,.0f} | {'yes' if equal else 'NO'} |", flush=True)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
