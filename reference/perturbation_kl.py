"""Second-order (Gauss-Newton) logit KL of perturbations of a graph's tensors, from one float walk.

The recipes' searches rank candidate quantizers by how much they move the
model's prediction: the KL between the softmax of the reference logits ``z``
and of the perturbed ones. Measuring it takes one forward pass per candidate.
To second order in the logit change ``dz`` it is a quadratic form

    KL(p || softmax(z + dz)) = 1/2 dz^T F dz + O(|dz|^3),
    F = diag(p) - p p^T = sum_y p_y (e_y - p)(e_y - p)^T,

and, linearising the network after tensor ``t`` (``dz = J_t dx``), with
``g_y = J_t^T sqrt(p_y) (e_y - p)`` (one backward pass seeded with that
vector per image gives ``g_y`` at every tensor at once):

    KL ~= 1/2 sum_y (g_y . dx)^2                                      (per image)

-- the Gauss-Newton term of the KL's Taylor expansion, exact for the
linearised network (no diagonal approximation: the dot product keeps the
correlations between the elements of ``dx``, e.g. a whole channel group
clipped together). So ONE forward pass and ``K`` backward passes give the
KL estimate of ANY number of candidate perturbations at ANY tensors, each
costing one elementwise product with the stored gradients. ``K`` = the
number of classes when it is at most `MAX_RANKS`, else the ``MAX_RANKS``
most probable classes of each image (the omitted terms carry the remaining
probability mass; exact on the bundled digits model, 10 classes).

This is the Fisher/Hessian sensitivity of HAWQ-V2 (Dong et al., NeurIPS 2020)
and BRECQ (Li et al., ICLR 2021) in its Gauss-Newton form, evaluated against
the candidates' actual perturbations instead of a trace or a diagonal.

The walk runs (float32 by default) on the graph's own float function
(`reference.float_ops.FloatOps`), in chunks of images (`chunk_images`: the
stored perturbations and gradients of one chunk stay in memory); the dot
products and sums are float64 numpy reductions in a fixed order, so the
result does not depend on torch's thread count beyond the last bits of its
GEMMs.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from reference.float_ops import FloatOps
from simulator import ir
from simulator.progress import Progress
from simulator.walk import walk

__all__ = ["perturbation_kl", "MAX_RANKS", "chunk_images"]

MAX_RANKS = 16                  # backward passes per chunk: classes (ranked per image by probability)
_CHUNK_ELEMENTS = 1 << 25       # stored candidate perturbations + gradients per chunk (float64: 256 MiB)
_COPIES = 8                     # per tensor element: its value, its gradient and ~6 candidate perturbations


def chunk_images(per_image_elements: int, n: int) -> int:
    """Images per chunk so that ``per_image_elements`` x images stays under `_CHUNK_ELEMENTS` (>= 1)."""
    return int(max(1, min(n, _CHUNK_ELEMENTS // max(per_image_elements, 1))))


def _dots(g: torch.Tensor, deltas: np.ndarray) -> np.ndarray:
    """``[candidate, image]`` sums over every other axis of ``g * delta`` (float64 numpy, order fixed)."""
    n = g.shape[0]
    return np.einsum("cim,im->ci", deltas.reshape(len(deltas), n, -1), g.detach().double().numpy().reshape(n, -1))


def perturbation_kl(graph: ir.Graph, images: np.ndarray,
                    candidates: Mapping[str, Callable[[torch.Tensor, int], list[np.ndarray]]],
                    desc: str = "perturbation KL", batch_size: int | None = None,
                    dtype: torch.dtype = torch.float32) -> dict[str, np.ndarray]:
    """Mean over ``images`` of the second-order logit KL (module docstring) of every candidate.

    ``candidates[t](x, start)`` gets tensor ``t``'s values (``dtype``, detached) on the chunk of
    images ``start, start + 1, ...`` and returns one perturbation ``dx`` per candidate (numpy,
    same shape); the result maps ``t`` to the KL estimate of each, in the same order."""
    names = list(candidates)
    n = len(images)
    if batch_size is None:
        shapes = ir.tensor_shapes(graph)
        batch_size = chunk_images(_COPIES * sum(int(np.prod(shapes[t][1:])) for t in names), n)
    ops = FloatOps(graph, dtype)
    sums = {t: None for t in names}
    out_name = graph.outputs[0]
    with Progress(n, desc, unit="image") as bar:
        for s in range(0, n, batch_size):
            x = torch.as_tensor(np.asarray(images[s:s + batch_size])).to(dtype)
            kept: dict[str, torch.Tensor] = {}

            def keep(name, t):
                if name in candidates:
                    kept[name] = t

            with torch.enable_grad():
                x.requires_grad_(True)          # gradients flow from the input on, through every tensor
                z = walk(graph, ops, x, keep)[out_name]
                deltas = {t: np.stack([np.asarray(d, dtype=np.float64) for d in candidates[t](kept[t].detach(), s)])
                          for t in names}
                _accumulate(z, kept, deltas, sums)
            bar.update(len(x))
    return {t: 0.5 * sums[t] / n for t in names}


def _seeds(z: torch.Tensor) -> list[torch.Tensor]:
    """``sqrt(p_y) (e_y - p)`` per image for its ``K`` most probable classes (rank r -> one seed)."""
    p = torch.softmax(z.detach(), dim=-1)
    k = min(z.shape[-1], MAX_RANKS)
    order = torch.argsort(-p, dim=-1, stable=True)[:, :k]
    out = []
    for r in range(k):
        y = order[:, r]
        py = p.gather(1, y[:, None])
        e = torch.zeros_like(p).scatter_(1, y[:, None], 1.0)
        out.append(py.sqrt() * (e - p))
    return out


def _accumulate(z, kept, deltas, sums) -> None:
    names = list(deltas)
    seeds = _seeds(z)
    for i, v in enumerate(seeds):
        grads = torch.autograd.grad(z, [kept[t] for t in names], grad_outputs=v, retain_graph=i < len(seeds) - 1,
                                    allow_unused=True)
        for t, g in zip(names, grads):
            if g is None:                      # the tensor does not reach the output: no effect
                g = torch.zeros_like(kept[t])
            sq = (_dots(g, deltas[t]) ** 2).sum(axis=1)
            sums[t] = sq if sums[t] is None else sums[t] + sq
