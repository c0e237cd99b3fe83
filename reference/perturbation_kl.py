"""Second-order (Gauss-Newton) logit KL of perturbations of a graph's tensors, from one float walk.

The recipes' searches rank candidate quantizers by how much they move the
model's prediction: the KL between the softmax of the reference logits ``z``
and of the perturbed ones. Measuring it takes one forward pass per candidate.
To second order in the logit change ``dz`` it is a quadratic form

    KL(p || softmax(z + dz)) = 1/2 dz^T F dz + O(|dz|^3),
    F = diag(p) - p p^T = sum_y p_y (e_y - p)(e_y - p)^T,

i.e. ``1/2 Var_{y ~ p}(dz_y)``: half the variance of the logit change under
the model's own prediction (invariant to a constant added to every logit).
Linearising the network after tensor ``t`` (``dz = J_t dx``), the logit
differences ``a_y = dz_y - dz_last = (J_t^T (e_y - e_last)) . dx`` come from
one backward pass per class ``y`` (seeded with ``e_y - e_last``, all
tensors at once) and one dot product per candidate:

    KL ~= 1/2 sum_y p_y (a_y - sum_y' p_y' a_y')^2                    (per image)

-- the Gauss-Newton term of the KL's Taylor expansion, exact for the
linearised network (no diagonal approximation: the dot product keeps the
correlations between the elements of ``dx``, e.g. a whole channel group
clipped together). So ONE forward pass and ``K - 1`` backward passes give
the KL estimate of ANY number of candidate perturbations at ANY tensors.
``K`` = the number of classes when it is at most `MAX_RANKS` (exact: the
bundled digits model has 10), else each image's ``MAX_RANKS`` most probable
classes with their probabilities renormalised (the others' logits are
assumed to move with the last kept one).

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
_CHUNK_ELEMENTS = 1 << 26       # stored values, gradients and candidate perturbations per chunk (float32: 256 MiB)
_COPIES = 8                     # per tensor element: its value, its gradient and ~6 candidate perturbations


def chunk_images(per_image_elements: int, n: int) -> int:
    """Images per chunk so that ``per_image_elements`` x images stays under `_CHUNK_ELEMENTS` (>= 1)."""
    return int(max(1, min(n, _CHUNK_ELEMENTS // max(per_image_elements, 1))))


def _dots(g: torch.Tensor, deltas: np.ndarray) -> np.ndarray:
    """``[candidate, image]`` sums over every other axis of ``g * delta`` (float32 numpy einsum: its own
    loops, so the order is fixed), returned in float64."""
    n = g.shape[0]
    gg = g.detach().to(torch.float32).numpy().reshape(n, -1)
    return np.einsum("cim,im->ci", deltas.reshape(len(deltas), n, -1), gg).astype(np.float64)


def perturbation_kl(graph: ir.Graph, images: np.ndarray,
                    candidates: Mapping[str, Callable[[torch.Tensor, int], list[np.ndarray]]],
                    desc: str = "perturbation KL", batch_size: int | None = None,
                    dtype: torch.dtype = torch.float32) -> dict[str, np.ndarray]:
    """Mean over ``images`` of the second-order logit KL (module docstring) of every candidate.

    ``candidates[t](x, start)`` gets tensor ``t``'s values (``dtype``, detached) on the chunk of
    images ``start, start + 1, ...`` and returns the perturbation ``dx`` of each candidate (numpy
    ``[candidates, *x.shape]``); the result maps ``t`` to the KL estimate of each, in that order."""
    names = list(candidates)
    n = len(images)
    if n == 0:
        raise ValueError("perturbation_kl: no images")
    if batch_size is None:
        shapes = ir.tensor_shapes(graph)
        batch_size = chunk_images(_COPIES * sum(int(np.prod(shapes[t][1:])) for t in names), n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # float sums independent of the caller's thread count (see the docstring)
    try:
        return _perturbation_kl(graph, images, candidates, desc, batch_size, dtype, names, n)
    finally:
        torch.set_num_threads(threads)


def _perturbation_kl(graph, images, candidates, desc, batch_size, dtype, names, n):
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
                deltas = {t: np.asarray(candidates[t](kept[t].detach(), s), dtype=np.float32) for t in names}
                _accumulate(z, kept, deltas, sums)
            bar.update(len(x))
    return {t: 0.5 * sums[t] / n for t in names}


def _seeds(z: torch.Tensor) -> tuple[list[torch.Tensor], np.ndarray]:
    """Backward seeds ``e_{y_r} - e_{y_last}`` (r < K - 1) over each image's ``K`` most probable classes
    ``y_0..y_last`` and those classes' probabilities ``[N, K]`` (renormalised when K < classes)."""
    p = torch.softmax(z.detach().double(), dim=-1)
    k = min(z.shape[-1], MAX_RANKS)
    order = torch.argsort(-p, dim=-1, stable=True)[:, :k]
    pk = p.gather(1, order).numpy()
    last = torch.zeros_like(z).scatter_(1, order[:, -1:], 1.0)
    seeds = [torch.zeros_like(z).scatter_(1, order[:, r:r + 1], 1.0) - last for r in range(k - 1)]
    return seeds, pk / pk.sum(axis=1, keepdims=True)


def _accumulate(z, kept, deltas, sums) -> None:
    """Add ``sum over images of 2 x KL2`` of every candidate to ``sums``: with ``a_r = dz_{y_r} - dz_{y_last}``
    (one backward per seed, dotted with each candidate's ``dx``), ``KL2 = 1/2 Var_{r ~ p}(a_r)``."""
    names = list(deltas)
    seeds, pk = _seeds(z)
    a = {t: np.zeros((len(deltas[t]), len(pk), pk.shape[1])) for t in names}   # [candidate, image, rank]
    for i, v in enumerate(seeds):
        grads = torch.autograd.grad(z, [kept[t] for t in names], grad_outputs=v, retain_graph=i < len(seeds) - 1,
                                    allow_unused=True)
        for t, g in zip(names, grads):
            if g is not None:                  # None: the tensor does not reach the output, no effect
                a[t][:, :, i] = _dots(g, deltas[t])
    for t in names:
        mean = (a[t] * pk).sum(axis=2, keepdims=True)
        var = (pk * (a[t] - mean) ** 2).sum(axis=2).sum(axis=1)
        sums[t] = var if sums[t] is None else sums[t] + var
