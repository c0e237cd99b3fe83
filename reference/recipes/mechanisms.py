"""Mechanisms: named calibrator steps that compose on one static `QuantizedGraph`.

A mechanism rewrites the quantizers (and the frozen params around them) of
the tensors it *owns*, on a graph the static recipe has already calibrated.
Each registered entry is three things:

* a params parser (`reference.recipes.params.MECHANISM_PARSERS`, torch-free:
  the recipe YAML is checked at load, unknown keys with did-you-mean);
* ``claims(static_qg, params) -> {tensor: rank}``: the tensors it would
  rewrite on the static graph, each with a precedence rank;
* ``apply(qg, ctx, params, cfg, owned) -> QuantizedGraph``: the step, which
  rewrites only the tensors in ``owned``.

Ownership (one quantizer per tensor): every tensor claimed by several
mechanisms goes to the highest rank, ties to the one listed first in
`MECHANISM_PARSERS`.
The ranks today:

=====================  ===========================================  ====
mechanism              tensors it claims                            rank
=====================  ===========================================  ====
``two_scaled`` V-2SF   softmax / activation outputs read by GEMMs   2
``groups``             groupable boundaries (`igq_graph`):          1
                       LayerNorm / activation / ``attn @ v``
                       outputs read by linears, softmax rows
``two_scaled`` O-2SF   LayerNorm outputs read by linears            0
``predicted``          activation-code boundaries after ``x0``      -1
                       (`scalepredictor_graph.predicted_boundaries`:
                       norm1, q, k, v, attn_out, norm2, gelu)
``exits``              none: it adds exit ops after blocks, whose   --
                       tensors no other mechanism sees
=====================  ===========================================  ====

So with two_scaled and groups, two_scaled keeps the softmax and activation
outputs and the LayerNorm outliers are handled by per-instance groups
(norm1, attn_out and norm2 grouped; the attention and GELU outputs
two-scaled). A predicted per-image scale is the coarsest per-instance
treatment (one scale per tensor and image, against groups' one per channel
and image, or a structural outlier scale), so it yields to all three and
keeps what they leave: q, k, v with either of them, also attn_out with
two_scaled alone. Exits read only the residual stream, which no mechanism
rewrites. Steps then run in that order too (two_scaled, groups, predicted,
exits), each on the previous step's graph; the order in the YAML does not
matter.

This module is only the registry (no recipe imports, so no cycle): the
mechanisms register from their own modules, and `reference.recipes.composed`
imports them all and composes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from reference.recipes.params import MECHANISM_PARSERS
from simulator.qgraph import QuantizedGraph

__all__ = ["Mechanism", "Calibration", "register_mechanism", "MECHANISMS", "owners_of"]


@dataclass(frozen=True)
class Calibration:
    """What a step may read besides the graph: the model (float reference: a timm model, or the
    lowered `ir.Graph`), the calibration images, the static recipe's boundary statistics and the
    model's name (``vit_digits`` selects the bundled exit heads)."""

    model: object
    images: np.ndarray
    stats: dict
    model_name: str = "model"


@dataclass(frozen=True)
class Mechanism:
    name: str
    claims: Callable        # (static QuantizedGraph, params) -> {tensor: rank}
    apply: Callable         # (QuantizedGraph, Calibration, params, RecipeConfig, owned: frozenset) -> QuantizedGraph


#: name -> `Mechanism`, in `MECHANISM_PARSERS` order (application and tie-break order)
MECHANISMS: dict[str, Mechanism] = {}


def register_mechanism(name: str, claims: Callable):
    """Decorator registering ``apply`` as mechanism ``name`` (its params parser must be in
    `reference.recipes.params.MECHANISM_PARSERS`)."""
    if name not in MECHANISM_PARSERS:
        raise ValueError(f"mechanism {name!r}: add its params parser to reference.recipes.params.MECHANISM_PARSERS")

    def deco(apply):
        if name in MECHANISMS:
            raise ValueError(f"mechanism {name!r} registered twice")
        MECHANISMS[name] = Mechanism(name, claims, apply)
        ordered = {n: MECHANISMS[n] for n in MECHANISM_PARSERS if n in MECHANISMS}     # not import order
        MECHANISMS.clear()
        MECHANISMS.update(ordered)
        return apply
    return deco


def owners_of(static: QuantizedGraph, chosen: tuple) -> dict[str, frozenset]:
    """``chosen`` = ((name, params), ...) -> name -> the tensors it owns on ``static`` (the precedence rule)."""
    order = list(MECHANISMS)
    best: dict[str, tuple] = {}
    for name, params in chosen:
        for t, rank in MECHANISMS[name].claims(static, params).items():
            key = (rank, -order.index(name))
            if t not in best or key > best[t][0]:
                best[t] = (key, name)
    return {name: frozenset(t for t, (_, n) in best.items() if n == name) for name, _ in chosen}
