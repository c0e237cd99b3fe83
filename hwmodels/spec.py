"""Typed, frozen description of an accelerator (what `hwmodels.load` returns).

Every hardware quantity carries its unit in its name. Bandwidths are stored in
bytes per cycle whatever the YAML used (``bandwidth_gb_per_s`` is converted
with the NPU clock, 1 GB = 1e9 bytes).

Memory levels are positional, outermost first (the YAML mapping order):

* ``memories[0]`` — the off-chip backing store (DRAM, PSRAM): holds the
  weights; activations spill here when a layer's working set does not fit
  the global buffer.
* ``memories[1]`` — the global on-chip buffer (SRAM). Its size drives the
  tiling (see `hwmodels.tiling`).
* ``memories[2]`` (optional) — PE-local storage (register file / accumulator
  registers), accessed once per operand per MAC (see `hwmodels.cost`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DATAFLOWS",
    "FOLD_OVERLAPS",
    "SFU_UNITS",
    "REQUIRED_SFU_UNITS",
    "PrecisionMode",
    "PEArray",
    "MemoryLevel",
    "SFU",
    "NPUSpec",
]

DATAFLOWS = ("weight_stationary", "output_stationary", "input_stationary")
#: ``per_fold``: SCALE-Sim — every fold pays its own preload, fill and drain.
#: ``pipelined``: ZigZag — folds stream back to back, one fill/drain per layer.
FOLD_OVERLAPS = ("per_fold", "pipelined")
#: Special-function units, in the fixed order used by per-unit tuples.
SFU_UNITS = ("softmax", "gelu", "layernorm", "requant", "group_assign", "scale_predictor")
REQUIRED_SFU_UNITS = ("softmax", "gelu", "layernorm", "requant")


@dataclass(frozen=True)
class PrecisionMode:
    """One supported operand-precision pair of the PE array.

    ``macs_per_pe_per_cycle`` products of the reduction dimension are summed
    in one PE per cycle (BitFusion-style fused sub-multipliers), so a mode with
    p MACs/PE/cycle packs the reduction dimension p-fold.
    """

    w_bits: int
    a_bits: int
    macs_per_pe_per_cycle: int
    energy_per_mac_pj: float

    @property
    def label(self) -> str:
        return f"W{self.w_bits}A{self.a_bits}"

    def covers(self, w_bits: int, a_bits: int) -> bool:
        return self.w_bits >= w_bits and self.a_bits >= a_bits


@dataclass(frozen=True)
class PEArray:
    rows: int
    cols: int
    dataflow: str
    fold_overlap: str
    acc_bits: int
    precisions: tuple[PrecisionMode, ...]

    @property
    def pes(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class MemoryLevel:
    name: str
    size_bytes: int
    bandwidth_bytes_per_cycle: float
    read_energy_pj_per_byte: float
    write_energy_pj_per_byte: float


@dataclass(frozen=True)
class SFU:
    """A special-function unit: ``lanes`` elements in parallel.

    cycles = ceil(elements / lanes) * cycles_per_element
           + ceil(rows / lanes) * cycles_per_row
    """

    name: str
    lanes: int
    cycles_per_element: float
    cycles_per_row: float = 0.0
    energy_per_element_pj: float = 0.0


@dataclass(frozen=True)
class NPUSpec:
    """A validated accelerator. ``source`` is the YAML file it came from."""

    name: str
    source: str
    clock_mhz: float
    pe_array: PEArray
    memories: tuple[MemoryLevel, ...]
    sfus: tuple[SFU, ...]
    double_buffering: bool = True
    static_power_mw: float = 0.0

    @property
    def offchip(self) -> MemoryLevel:
        return self.memories[0]

    @property
    def global_buffer(self) -> MemoryLevel:
        return self.memories[1]

    @property
    def local(self) -> MemoryLevel | None:
        return self.memories[2] if len(self.memories) > 2 else None

    def sfu(self, unit: str) -> SFU | None:
        for s in self.sfus:
            if s.name == unit:
                return s
        return None

    def mode_for(self, w_bits: int, a_bits: int) -> PrecisionMode | None:
        """The smallest supported mode covering both widths, or None.

        "Smallest" = fewest w_bits * a_bits, then fewest w_bits; a W4A8
        layer on an array with W8A8 and W4A8 modes runs in W4A8, a W6A6 one
        in W8A8.
        """
        ok = [p for p in self.pe_array.precisions if p.covers(w_bits, a_bits)]
        if not ok:
            return None
        return min(ok, key=lambda p: (p.w_bits * p.a_bits, p.w_bits, -p.macs_per_pe_per_cycle))

    @property
    def ns_per_cycle(self) -> float:
        return 1000.0 / self.clock_mhz
