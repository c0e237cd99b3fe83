"""The dependency direction written in DESIGN.md, checked on the source.

fixedpoint imports nothing; simulator never imports reference or hwmodels
(the CLI, the composition root, is the one exception) and touches torch only
lazily in the GEMM engine; hwmodels sees only the trace (and the error type).

The whole direction is one rank table (`RANKS`): a module may import modules
of a lower rank, or of its own package at its own rank, never a higher rank
and never another package of the same rank. Lazy imports (inside functions)
count too, `if TYPE_CHECKING:` blocks do not. And no import cycle, lazy or not.
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


def _imports_at_run_time(path: Path) -> list[str]:
    """Every imported module name, lazy ones included, ``if TYPE_CHECKING:`` blocks excluded."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: resolve against the importing module's package
                pkg = _module_name(path).split(".")
                pkg = pkg if path.name == "__init__.py" else pkg[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            out += [f"{base}.{a.name}" for a in node.names]
    return out


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGES = ("simulator", "reference", "hwmodels", "reports")

# (module prefix, rank); the longest matching prefix decides. Why each sits where it does:
RANKS = (
    ("simulator.fixedpoint", 0),     # scalar integer primitives, no imports at all
    ("simulator.errors", 0),         # the one error type every package raises
    ("simulator", 1),                # the integer datapath: IR, walk, QuantizedGraph, kernels, op set, trace
    ("hwmodels", 2),                 # cost model: sees only simulator.trace / simulator.errors
    ("reference", 2),                # torch/timm: lowering, calibration, recipes, fake-quant op set
    ("reports", 3),                  # sweeps and reports: run points, read result files
    ("simulator.cli", 4),            # commands: the composition root, upstream imports lazily
    ("simulator.cost_command", 4),
    ("simulator.summary", 4),        # the main command's console/CSV/accelerator records
    ("simulator.engines", 4),        # --engine (graph only) and the graph calibrator / executors of a run
    ("reports.sweep", 5),            # the `simulate sweep` command, on top: uses the CLI's parser and logging
    ("simulator.vectors", 4),        # export-/verify-vectors commands
    ("simulator.onnx_command", 4),   # export-onnx / --onnx-qdq commands (docs/onnx.md)
    ("simulator.layer_report", 4),   # --layers: per-tensor SQNR, plot, per-layer cost CSV
    ("simulator.evaluation", 4),     # the main job's evaluation: fp32 (torch), --reference, mergeable shards
    ("simulator.dask_evaluation", 4),  # --cluster: shards of one evaluation on Dask workers
    # simulator.kernels.gemm_choice (rank 1, numpy + numba): --backend auto's measurement and per-machine
    # cache; it never imports torch (the torch facts come from simulator.kernels.gemm, its caller);
    # simulator.onnx_export / onnx_session (rank 1, numpy + onnx): QDQ writer, onnxruntime session;
    # reference.standard_fakequant / onnx_import / layer_error (rank 2): torch fake-quant, QDQ reader, SQNR;
    # reference.onnx_vit_reader / onnx_architecture (rank 2): a timm ViT's structure and params from QDQ
)


def _rank(module: str) -> tuple[int, str]:
    best = max((p for p, _ in RANKS if module == p or module.startswith(p + ".")), key=len)
    return dict(RANKS)[best], best


def _project_modules() -> dict[str, Path]:
    return {_module_name(f): f for pkg in PACKAGES for f in _files(pkg)}


def _resolve(name: str, modules: dict) -> str | None:
    """The project module an imported name lives in (``pkg.mod.func`` -> ``pkg.mod``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _import_graph() -> dict[str, set[str]]:
    modules = _project_modules()
    graph = {}
    for mod, f in modules.items():
        targets = {_resolve(n, modules) for n in _imports_at_run_time(f)}
        graph[mod] = {t for t in targets if t and t != mod}
    return graph


def test_rank_table_direction():
    """Imports go down the rank table; same rank only within one package (e.g. reference -/-> hwmodels)."""
    bad = []
    for mod, targets in _import_graph().items():
        r, _ = _rank(mod)
        for t in sorted(targets):
            rt, _ = _rank(t)
            same_pkg = t.split(".")[0] == mod.split(".")[0]
            if rt > r or (rt == r and not same_pkg):
                bad.append(f"{mod} (rank {r}) imports {t} (rank {rt})")
    assert bad == []


def test_no_import_cycles():
    """Tarjan's strongly connected components of the module import graph, lazy imports included."""
    graph = _import_graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_rank_table_catches_a_violation(tmp_path):
    """The checker itself: an upward import is reported (guards against a vacuous pass)."""
    assert _rank("simulator.kernels.gemm") == (1, "simulator")
    assert _rank("simulator.kernels.gemm_choice") == (1, "simulator")
    assert _rank("simulator.cli") == (4, "simulator.cli")
    assert _rank("reference.recipes.igq")[0] > _rank("simulator.qvit")[0]


def _files(pkg: str):
    return sorted((ROOT / pkg).rglob("*.py"))


def test_fixedpoint_imports_nothing():
    assert _imports(ROOT / "simulator" / "fixedpoint.py") == []


COMPOSITION_ROOT = ("cli.py", "cost_command.py", "preflight.py", "summary.py", "engines.py",
                    "onnx_command.py", "layer_report.py", "evaluation.py", "dask_evaluation.py")   # commands: may import upstream, lazily


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
    allowed = {"simulator.trace", "simulator.errors", "simulator.safe_yaml"}   # + the one YAML loader
    for f in _files("hwmodels"):
        for mod, _ in _imports(f):
            if mod.split(".")[0] in ("simulator", "reference", "torch", "timm"):
                assert mod in allowed, f"{f}: imports {mod}"
