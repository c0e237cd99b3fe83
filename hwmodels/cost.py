"""Pure per-layer cost functions: `LayerRecord` x `NPUSpec` -> `LayerCost`.

`LayerCost` values add up (``a + b``) and scale (``c.scaled(f)``), so a
model's cost is the sum of its layers' and an image's cost is the sum over
the layers it ran. Formulas (sources in brackets):

* MACs = ``batch*m*k*n``; BOPs = MACs * a_bits * b_bits with the trace's
  widths [IGQ-ViT, APQ; activation x activation matmuls use both activation
  widths]. Nonlinear work is reported as elements per SFU unit, not BOPs.
* ``shift_matmul`` (``attn @ V`` on log2 softmax codes): BOPs as above with
  ``a_bits`` = the code width (the barrel shifter's mux bits, `simulator.trace`).
  Assumption: the NPU YAMLs describe no separate shift-add datapath, so the
  array executes the shift-accumulate in the precision mode covering
  ``(b_bits, a_bits)`` at that mode's MACs/PE/cycle and energy per MAC --
  the same cycles and energy as a multiply of those widths (an upper bound
  for a dedicated shifter array). The log2 encoding itself is a
  ``requantize`` record on the requant unit.
* Precision mode: the smallest supported ``(w_bits, a_bits)`` mode covering
  the layer's ``(b_bits, a_bits)`` (fewest w*a bits); none -> `InputError`.
* Array cycles: SCALE-Sim fold timing, `hwmodels.dataflows`.
* GEMM output stage: every output narrower than the accumulator
  (``batch*m*n`` elements) is requantized by the ``requant`` SFU, which
  streams beside the array:
  ``compute = max(array cycles, requant cycles)``. Ops with ``fused_into``
  (residual adds) run in that same pass: they add the traffic of their extra
  operand but no compute cycles.
* SFU cycles = ``ceil(elements/lanes)*cycles_per_element +
  ceil(rows/lanes)*cycles_per_row``. ``requantize``, ``quantize_input`` and
  unfused ``add`` run on ``requant``.
* Traffic per level (bytes read / written at that level):
  off-chip from `hwmodels.tiling`; global buffer = array traffic
  (`dataflows.<df>.array_traffic`) + off-chip fills (writes) and spills
  (reads); PE-local (if present) per busy PE-cycle (``MACs / p``): operand
  reads ``MACs*(a_bits+b_bits)/8`` and one accumulator read + write at
  ``acc_bits`` [Eyeriss-style register-file accounting].
* Memory cycles = max over levels of ``ceil(bytes / bytes_per_cycle)``
  [Timeloop]; layer cycles = ``max(compute, memory)`` with
  ``double_buffering: true``, ``compute + memory`` without.
* Energy (pJ) = MACs * energy_per_mac_pj(mode) + sum over levels of bytes x
  read/write pJ per byte + SFU elements x energy_per_element_pj +
  static_power_mw x time (1 mW x 1 ns = 1 pJ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from simulator.errors import InputError
from simulator.trace import GEMM_KINDS, LayerRecord, Trace

from . import dataflows, tiling
from .report import CostReport
from .spec import SFU_UNITS, NPUSpec

__all__ = ["LayerCost", "layer_cost", "estimate", "UNIT_OF_KIND"]

#: Trace kind -> the SFU unit that executes it.
UNIT_OF_KIND = {
    "softmax": "softmax",
    "gelu": "gelu",
    "layernorm": "layernorm",
    "requantize": "requant",
    "quantize_input": "requant",
    "add": "requant",
    "group_assign": "group_assign",
    "scale_predictor": "scale_predictor",
}


@dataclass(frozen=True)
class LayerCost:
    """Cost of one execution of one layer (or a sum / mean of several).

    Tuples: ``sfu_*`` follow `spec.SFU_UNITS`; ``read_bytes``,
    ``write_bytes``, ``level_cycles``, ``energy_mem_pj`` follow the NPU's
    memory levels (outermost first).
    """

    name: str
    kind: str
    unit: str
    mode: str
    macs: float
    bops: float
    sfu_elements: tuple[float, ...]
    sfu_cycles: tuple[float, ...]
    read_bytes: tuple[float, ...]
    write_bytes: tuple[float, ...]
    level_cycles: tuple[float, ...]
    array_cycles: float
    compute_cycles: float
    memory_cycles: float
    cycles: float
    compute_bound_cycles: float
    memory_bound_cycles: float
    folds: float
    busy_pe_cycles: float
    pe_cycles: float
    energy_mac_pj: float
    energy_sfu_pj: float
    energy_mem_pj: tuple[float, ...]
    energy_static_pj: float
    offchip_blocks: int = 1

    # ------------------------------------------------------------ derived
    @property
    def energy_pj(self) -> float:
        return self.energy_mac_pj + self.energy_sfu_pj + sum(self.energy_mem_pj) + self.energy_static_pj

    @property
    def offchip_bytes(self) -> float:
        return self.read_bytes[0] + self.write_bytes[0]

    @property
    def buffer_bytes(self) -> float:
        return self.read_bytes[1] + self.write_bytes[1]

    @property
    def utilisation(self) -> float:
        """Busy PE-cycles / available PE-cycles (mode-independent)."""
        return self.busy_pe_cycles / self.pe_cycles if self.pe_cycles else 0.0

    @property
    def bound(self) -> str:
        return "compute" if self.compute_bound_cycles >= self.memory_bound_cycles else "memory"

    @property
    def bound_level(self) -> int:
        """Index of the memory level with the most cycles."""
        return max(range(len(self.level_cycles)), key=lambda i: self.level_cycles[i])

    # ------------------------------------------------------------ algebra
    def __add__(self, other: "LayerCost") -> "LayerCost":
        vals = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("name", "kind", "unit", "mode"):
                vals[f.name] = a if a == b else "total"
            elif f.name == "offchip_blocks":
                vals[f.name] = max(a, b)
            elif isinstance(a, tuple):
                vals[f.name] = tuple(x + y for x, y in zip(a, b))
            else:
                vals[f.name] = a + b
        return LayerCost(**vals)

    def scaled(self, factor: float) -> "LayerCost":
        """Every additive quantity times ``factor`` (e.g. the fraction of images that ran it)."""
        vals = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("name", "kind", "unit", "mode", "offchip_blocks"):
                vals[f.name] = v
            elif isinstance(v, tuple):
                vals[f.name] = tuple(x * factor for x in v)
            else:
                vals[f.name] = v * factor
        return LayerCost(**vals)


# --------------------------------------------------------------- helpers


def sfu_cycles(npu: NPUSpec, unit: str, elements: int, rows: int = 0) -> int:
    s = npu.sfu(unit)
    return math.ceil(math.ceil(elements / s.lanes) * s.cycles_per_element
                     + math.ceil(rows / s.lanes) * s.cycles_per_row)


def _require_unit(npu: NPUSpec, unit: str, rec: LayerRecord) -> None:
    if npu.sfu(unit) is None:
        raise InputError(f"{npu.source}: sfus.{unit}: missing, needed by layer "
                         f"'{rec.name}' (kind {rec.kind})")


def _unit_vec(unit: str, value: float) -> tuple[float, ...]:
    return tuple(float(value) if u == unit else 0.0 for u in SFU_UNITS)


def _finish(npu: NPUSpec, rec: LayerRecord, *, unit: str, mode: str, macs: float, bops: float,
            sfu_unit: str, sfu_elems: float, sfu_cyc: float, reads: list, writes: list,
            array_cycles: float, compute: float, folds: float, busy: float, e_mac: float,
            blocks: int = 1) -> LayerCost:
    """Memory cycles, overlap rule, bound and energy: shared by every kind."""
    level_cycles = tuple(float(math.ceil((r + w) / lv.bandwidth_bytes_per_cycle))
                         for r, w, lv in zip(reads, writes, npu.memories))
    memory = max(level_cycles)
    cycles = max(compute, memory) if npu.double_buffering else compute + memory
    compute_bound = compute >= memory
    e_mem = tuple(r * lv.read_energy_pj_per_byte + w * lv.write_energy_pj_per_byte
                  for r, w, lv in zip(reads, writes, npu.memories))
    unit_spec = npu.sfu(sfu_unit) if sfu_unit else None
    e_sfu = sfu_elems * unit_spec.energy_per_element_pj if unit_spec else 0.0
    return LayerCost(
        name=rec.name, kind=rec.kind, unit=unit, mode=mode, macs=macs, bops=bops,
        sfu_elements=_unit_vec(sfu_unit, sfu_elems), sfu_cycles=_unit_vec(sfu_unit, sfu_cyc),
        read_bytes=tuple(float(r) for r in reads), write_bytes=tuple(float(w) for w in writes),
        level_cycles=level_cycles, array_cycles=float(array_cycles), compute_cycles=float(compute),
        memory_cycles=memory, cycles=float(cycles),
        compute_bound_cycles=float(cycles) if compute_bound else 0.0,
        memory_bound_cycles=0.0 if compute_bound else float(cycles),
        folds=float(folds), busy_pe_cycles=float(busy), pe_cycles=float(cycles) * npu.pe_array.pes,
        energy_mac_pj=float(e_mac), energy_sfu_pj=float(e_sfu), energy_mem_pj=e_mem,
        energy_static_pj=npu.static_power_mw * cycles * npu.ns_per_cycle,
        offchip_blocks=blocks,
    )


# ----------------------------------------------------------- layer kinds


def gemm_shape(rec: LayerRecord, npu: NPUSpec):
    """(GemmShape, PrecisionMode) of a GEMM record on ``npu``; InputError if unsupported."""
    pe = npu.pe_array
    mode = npu.mode_for(rec.b_bits, rec.a_bits)
    if mode is None:
        have = ", ".join(p.label for p in pe.precisions)
        raise InputError(f"{npu.source}: pe_array.precisions: no mode covers layer '{rec.name}' "
                         f"(W{rec.b_bits}A{rec.a_bits}); supported: {have}")
    if rec.acc_bits > pe.acc_bits:
        raise InputError(f"{npu.source}: pe_array.acc_bits: {pe.acc_bits} is narrower than the "
                         f"{rec.acc_bits}-bit accumulators layer '{rec.name}' was simulated with")
    g = dataflows.GemmShape(rec.m, rec.k, rec.n, rec.batch, rec.a_bits, rec.b_bits,
                            rec.out_bits or rec.a_bits, pe.acc_bits, mode.macs_per_pe_per_cycle)
    return g, mode


def _gemm_cost(rec: LayerRecord, npu: NPUSpec, input_offchip: bool, output_offchip: bool) -> LayerCost:
    pe, gb = npu.pe_array, npu.global_buffer
    g, mode = gemm_shape(rec, npu)
    timing = dataflows.fold_timing(g, pe.rows, pe.cols, pe.dataflow, pe.fold_overlap)
    _require_unit(npu, "requant", rec)
    # outputs kept at accumulator width (e.g. Q.K^T scores into softmax) need no requant
    out_elems = g.batch * g.m * g.n if g.out_bits < g.acc_bits else 0
    rq_cycles = sfu_cycles(npu, "requant", out_elems)
    arr = dataflows.get(pe.dataflow).array_traffic(g, pe.rows, pe.cols)
    off = tiling.gemm_offchip(g, b_is_weight=rec.b_is_weight, weight_bytes=rec.weight_bytes,
                              buffer_bytes=gb.size_bytes, double_buffering=npu.double_buffering,
                              rows=pe.rows, cols=pe.cols, dataflow=pe.dataflow,
                              input_offchip=input_offchip, output_offchip=output_offchip)
    if off is None:
        need = tiling.min_gemm_buffer(g, pe.rows, pe.cols, npu.double_buffering)
        raise InputError(f"{npu.source}: memories.{gb.name}.size_bytes: {gb.size_bytes} cannot hold "
                         f"one array-wide strip of layer '{rec.name}' (needs >= {math.ceil(need)})")
    macs = g.macs
    busy = macs / g.pack
    reads = [off.read, arr.read + off.write]
    writes = [off.write, arr.write + off.read]
    if npu.local is not None:
        reads.append(macs * (g.a_bits + g.b_bits) / 8 + busy * g.acc_bits / 8)
        writes.append(busy * g.acc_bits / 8)
    return _finish(npu, rec, unit="array", mode=mode.label, macs=macs, bops=rec.bops,
                   sfu_unit="requant", sfu_elems=out_elems, sfu_cyc=rq_cycles, reads=reads,
                   writes=writes, array_cycles=timing.cycles,
                   compute=max(timing.cycles, rq_cycles), folds=timing.folds, busy=busy,
                   e_mac=macs * mode.energy_per_mac_pj, blocks=off.blocks)


def _eltwise_cost(rec: LayerRecord, npu: NPUSpec, input_offchip: bool, output_offchip: bool) -> LayerCost:
    unit = UNIT_OF_KIND[rec.kind]
    _require_unit(npu, unit, rec)
    size = npu.global_buffer.size_bytes
    nl = len(npu.memories)
    in_b = rec.elements * rec.in_bits / 8
    if rec.fused_into:
        # Runs in the host GEMM's output stage: only its extra operand moves.
        off = tiling.eltwise_offchip(in_b, 0.0, size)
        reads, writes = [off.read, in_b + off.write], [off.write, off.read]
        reads += [0.0] * (nl - 2)
        writes += [0.0] * (nl - 2)
        return _finish(npu, rec, unit="fused", mode="", macs=0, bops=0, sfu_unit=unit,
                       sfu_elems=rec.elements, sfu_cyc=0, reads=reads, writes=writes,
                       array_cycles=0, compute=0, folds=0, busy=0, e_mac=0.0)
    # group_assign writes one out_bits group index per grouped row/channel, not per element
    out_b = (rec.rows if rec.kind == "group_assign" else rec.elements) * rec.out_bits / 8
    off = tiling.eltwise_offchip(in_b, out_b, size, input_offchip=input_offchip,
                                 output_offchip=output_offchip)
    reads = [off.read, in_b + off.write] + [0.0] * (nl - 2)
    writes = [off.write, out_b + off.read] + [0.0] * (nl - 2)
    cyc = sfu_cycles(npu, unit, rec.elements, rec.rows)
    return _finish(npu, rec, unit=unit, mode="", macs=0, bops=0, sfu_unit=unit,
                   sfu_elems=rec.elements, sfu_cyc=cyc, reads=reads, writes=writes,
                   array_cycles=0, compute=cyc, folds=0, busy=0, e_mac=0.0)


def _check_record(rec: LayerRecord) -> None:
    """Shapes of a (possibly user-supplied JSON) trace record must make sense."""
    if rec.kind in GEMM_KINDS:
        need = {"m": rec.m, "k": rec.k, "n": rec.n, "batch": rec.batch,
                "a_bits": rec.a_bits, "b_bits": rec.b_bits}
    else:
        need = {}
    for key, v in need.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"trace layer '{rec.name}': {key} must be a positive int, got {v!r}")
    for key in ("elements", "rows", "in_bits", "out_bits", "weight_bytes"):
        v = getattr(rec, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise InputError(f"trace layer '{rec.name}': {key} must be an int >= 0, got {v!r}")


def layer_cost(rec: LayerRecord, npu: NPUSpec, *, input_offchip: bool = False,
               output_offchip: bool = False) -> LayerCost:
    """Cost of one execution of ``rec`` on ``npu`` (per image).

    ``input_offchip`` / ``output_offchip`` mark graph boundaries whose tensor
    always crosses the off-chip interface (the input image, the logits).
    """
    _check_record(rec)
    if rec.kind in GEMM_KINDS:
        return _gemm_cost(rec, npu, input_offchip, output_offchip)
    if rec.kind in UNIT_OF_KIND:
        return _eltwise_cost(rec, npu, input_offchip, output_offchip)
    kinds = ", ".join(GEMM_KINDS + tuple(UNIT_OF_KIND))
    raise InputError(f"trace layer '{rec.name}': unknown kind '{rec.kind}'; expected one of {kinds}")


def estimate(trace: Trace, npu: NPUSpec) -> CostReport:
    """Cost every layer of ``trace`` on ``npu``; per-image totals via the ``layer_ran`` mask.

    The first layer reads its input from off chip (the image) and the last
    writes its output there (the logits).
    """
    n_layers = len(trace.layers)
    if n_layers == 0:
        raise InputError(f"trace of model '{trace.model}' has no layers to cost")
    mask = trace.ran_mask() if trace.n_images > 0 else np.ones((1, n_layers), dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (max(trace.n_images, 1), n_layers):
        raise InputError(f"trace of model '{trace.model}': layer_ran has shape {mask.shape}, "
                         f"expected ({trace.n_images}, {n_layers})")
    weights = sum(r.weight_bytes for r in trace.layers)
    off = npu.offchip
    if weights > off.size_bytes:
        raise InputError(f"{npu.source}: memories.{off.name}.size_bytes: {off.size_bytes} is "
                         f"smaller than the model's {weights} weight bytes")
    costs = tuple(
        layer_cost(r, npu, input_offchip=(j == 0 or r.kind == "quantize_input"),
                   output_offchip=(j == n_layers - 1))
        for j, r in enumerate(trace.layers)
    )
    return CostReport(npu, trace.model, trace.recipe, trace.n_images, costs, mask)
