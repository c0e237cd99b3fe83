"""Hardware cost models: accelerator YAML -> `NPUSpec` -> per-layer and per-image cost.

Public API::

    npu = hwmodels.load("configs/npu_int8.yaml")            # NPUSpec
    npus = hwmodels.load(["a.yaml", "b.yaml"])              # list[NPUSpec]
    npus = hwmodels.load_distinct(["npu_int8", "b.yaml"])   # bare names -> configs/; a name used by
                                                            # two different files is an error
    report = hwmodels.estimate(trace, npu)                  # CostReport
    report.to_dict()                                        # JSON-ready
    hwmodels.format_report(report)                          # text table + totals
    hwmodels.format_comparison([r1, r2])                    # side by side

Dependency direction: hwmodels imports only `simulator.trace` and
`simulator.errors` from the project; it sees the executed trace, nothing else.
"""

from .cost import LayerCost, estimate, layer_cost
from .load import load, load_distinct, parse, resolve_path
from .report import CostReport, Distribution, format_comparison, format_report
from .spec import NPUSpec

__all__ = [
    "load",
    "load_distinct",
    "resolve_path",
    "parse",
    "estimate",
    "layer_cost",
    "format_report",
    "format_comparison",
    "CostReport",
    "Distribution",
    "LayerCost",
    "NPUSpec",
]
