"""The dependency direction written in DESIGN.md, checked on the source.

fixedpoint imports nothing; simulator never imports reference or hwmodels
(the CLI, the composition root, is the one exception) and touches torch only
lazily in the GEMM engine; hwmodels sees only the trace (and the error type).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
    return out


def _files(pkg: str):
    return sorted((ROOT / pkg).rglob("*.py"))


def test_fixedpoint_imports_nothing():
    assert _imports(ROOT / "simulator" / "fixedpoint.py") == []


COMPOSITION_ROOT = ("cli.py", "cost_command.py", "preflight.py", "summary.py")   # commands: may import upstream, lazily


def test_composition_root_imports_upstream_lazily():
    for name in COMPOSITION_ROOT:
        for mod, top in _imports(ROOT / "simulator" / name):
            if mod.split(".")[0] in ("reference", "hwmodels", "reports", "torch", "timm"):
                assert not top, f"simulator/{name}: imports {mod} at top level"


def test_simulator_does_not_reach_upstream():
    for f in _files("simulator"):
        if f.name in COMPOSITION_ROOT:
            continue
        for mod, top in _imports(f):
            root = mod.split(".")[0]
            assert root not in ("reference", "hwmodels", "reports", "timm"), f"{f}: imports {mod}"
            if root == "torch":
                assert not top and f.name == "gemm.py", f"{f}: imports torch ({'top level' if top else 'lazily'})"


def test_hwmodels_sees_only_the_trace():
    allowed = {"simulator.trace", "simulator.errors"}
    for f in _files("hwmodels"):
        for mod, _ in _imports(f):
            if mod.split(".")[0] in ("simulator", "reference", "torch", "timm"):
                assert mod in allowed, f"{f}: imports {mod}"
