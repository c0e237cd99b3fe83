"""What ran: the executed trace that both executors return and hwmodels costs.

One `LayerRecord` per operator of the integer graph, in execution order, with
the shapes *per image* and the bit-widths that were actually used. Dynamic
recipes (early exits, groups, predicted scales) record per-image facts in
`Trace.layer_ran` (which layers each image executed) and `Trace.extras`.

Conventions (hwmodels relies on them):

* GEMM kinds (``linear``, ``matmul``) compute ``batch`` independent products
  ``[m, k] x [k, n]`` per image (``batch`` = heads for attention matmuls, 1 for
  linear layers). ``a_bits`` is the first operand's width, ``b_bits`` the
  second's; ``b_is_weight`` says whether the second operand is a stored weight
  (read from memory once per image batch) or an activation.
  MACs per image = ``batch * m * k * n``; BOPs = MACs * a_bits * b_bits.
  ``shift_matmul`` is a GEMM whose first operand is a power-of-two code
  (``attn @ V`` with the static recipe's log2 softmax, `simulator.softmax_codes`):
  each "MAC" is a shift of the b_bits-wide operand by a value of ``a_bits`` bits
  (an ``a_bits``-stage barrel shifter, ``a_bits * b_bits`` mux bits) and an add;
  the same BOP formula counts those mux bits in place of a multiplier's
  ``a_bits * b_bits`` partial-product bits.
* Element-wise / row-wise special-function kinds (``softmax``, ``gelu``,
  ``layernorm``, ``requantize``, ``quantize_input``, ``add``) process
  ``elements`` values per image; ``rows`` is the number of independent
  rows (tokens, or token x head for softmax) that need a reduction.
* ``in_bits`` / ``out_bits`` are the storage widths of the tensors read and
  written, so traffic = elements x bits / 8.
* ``fused_into`` names the GEMM whose output stage performs this op (e.g. the
  residual add fused into ``proj``), when it has no tensor of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["LayerRecord", "Trace", "GEMM_KINDS", "SFU_KINDS"]

GEMM_KINDS = ("linear", "matmul", "shift_matmul")
SFU_KINDS = ("softmax", "gelu", "layernorm", "requantize", "quantize_input", "add")


@dataclass(frozen=True)
class LayerRecord:
    """One executed operator, per image."""

    name: str
    kind: str
    m: int = 0
    k: int = 0
    n: int = 0
    batch: int = 1
    a_bits: int = 0
    b_bits: int = 0
    b_is_weight: bool = False
    acc_bits: int = 32
    elements: int = 0
    rows: int = 0
    in_bits: int = 0
    out_bits: int = 0
    weight_bytes: int = 0
    fused_into: str = ""

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image (0 for non-GEMM kinds)."""
        return self.batch * self.m * self.k * self.n if self.kind in GEMM_KINDS else 0

    @property
    def bops(self) -> int:
        """Bit operations per image, MACs * a_bits * b_bits (IGQ-ViT/APQ convention)."""
        return self.macs * self.a_bits * self.b_bits


@dataclass
class Trace:
    """The executed graph for a batch of images.

    ``layer_ran[i, j]`` is True when image ``i`` executed layer ``j`` (all True
    for static-depth recipes). ``overflows[name]`` counts accumulator values
    that left their declared width and were saturated (defined behaviour,
    reported, never silent). ``extras`` holds per-image arrays that dynamic
    recipes add (e.g. ``exit_depth``), keyed by name.
    """

    model: str
    recipe: str
    layers: list[LayerRecord]
    n_images: int
    layer_ran: np.ndarray | None = None
    overflows: dict[str, int] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def ran_mask(self) -> np.ndarray:
        """Bool [n_images, n_layers]; all True when no layer was skipped."""
        if self.layer_ran is None:
            return np.ones((self.n_images, len(self.layers)), dtype=bool)
        return self.layer_ran

    def macs_per_image(self) -> np.ndarray:
        macs = np.array([r.macs for r in self.layers], dtype=np.int64)
        return self.ran_mask().astype(np.int64) @ macs

    def bops_per_image(self) -> np.ndarray:
        bops = np.array([r.bops for r in self.layers], dtype=np.int64)
        return self.ran_mask().astype(np.int64) @ bops

    def to_dict(self) -> dict:
        """JSON-ready form (per-image arrays as lists)."""
        return {
            "model": self.model,
            "recipe": self.recipe,
            "n_images": self.n_images,
            "layers": [asdict(r) for r in self.layers],
            "layer_ran": None if self.layer_ran is None else self.layer_ran.tolist(),
            "overflows": dict(self.overflows),
            "extras": {k: np.asarray(v).tolist() for k, v in self.extras.items()},
        }

    @classmethod
    def concat(cls, traces: list["Trace"]) -> "Trace":
        """One trace for the images of ``traces`` in order (runs of one graph on consecutive batches or
        shards): per-image arrays concatenated, overflow counts summed (in first-seen key order)."""
        first = traces[0]
        ran = None
        if any(t.layer_ran is not None for t in traces):
            ran = np.concatenate([t.ran_mask() for t in traces])
        overflows: dict[str, int] = {}
        for t in traces:
            for name, count in t.overflows.items():
                overflows[name] = overflows.get(name, 0) + int(count)
        extras = {k: np.concatenate([np.asarray(t.extras[k]) for t in traces]) for k in first.extras}
        return cls(first.model, first.recipe, first.layers, sum(t.n_images for t in traces), ran, overflows,
                   extras)

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        return cls(
            model=d["model"],
            recipe=d["recipe"],
            n_images=int(d["n_images"]),
            layers=[LayerRecord(**r) for r in d["layers"]],
            layer_ran=None if d.get("layer_ran") is None else np.asarray(d["layer_ran"], dtype=bool),
            overflows=dict(d.get("overflows", {})),
            extras={k: np.asarray(v) for k, v in d.get("extras", {}).items()},
        )
