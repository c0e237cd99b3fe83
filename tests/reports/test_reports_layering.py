"""reports/ reads result files only: the figure, report and Pareto modules import
no part of the pipeline (reference, simulator, hwmodels, torch, numba). The
exceptions are `simulator.atomic_files`, the project's file writer, and
`simulator.significance`, its exact intervals and tests (numpy/scipy only): no pipeline code."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READERS = ("pareto.py", "figures.py", "review.py")
ALLOWED_ROOTS = {"__future__", "collections", "io", "math", "os", "re", "tempfile", "pathlib", "itertools", "matplotlib",
                 "numpy", "reports"}
WRITERS = {"simulator.atomic_files",    # every output goes through the one writer (issue 18)
           "simulator.significance"}   # one interval / paired-test definition for CLI and reports


def test_report_modules_read_json_only():
    for name in READERS:
        tree = ast.parse((ROOT / "reports" / name).read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for mod in mods:
                if mod in WRITERS:
                    continue
                assert mod.split(".")[0] in ALLOWED_ROOTS, f"reports/{name}: imports {mod}"
                assert mod.split(".")[0] != "reports" or mod.split(".")[-1] in ("pareto", "figures", "review") \
                    or mod == "reports", f"reports/{name}: imports {mod}"
