"""Per-image requantization parameters of a ScalePredictor model.

`predict_log2` runs the fixed-point predictor (`simulator.scale_predictor`)
in a numba kernel over a batch of ``x0`` codes; `block_params` turns one
block's predicted log2 ratios into the per-image multipliers of every
requantization that reads or writes a predicted-scale tensor. `block_params`
uses operators, slicing and one concatenation only, so it runs unchanged on
numpy arrays (the simulator) and torch tensors (the fake-quant executor).

Which multiplier takes which gain (``d_b`` = predicted log2(s_b / s_static_b)
of boundary b, Q15; a gain ``g`` multiplies the real factor by ``2**g``)::

    norm1 LayerNorm (G, B, out_shift)   -d_norm1
    qkv  q / k / v channels             d_norm1 - d_q | d_k | d_v
    softmax input (q k^T -> Q15)        d_q + d_k
    attn @ v -> attn_out                d_v - d_attn_out
    proj (output: static residual)      d_attn_out
    norm2 LayerNorm                     -d_norm2
    fc1  (output: Q12, static)          d_norm2
    GELU output                         -d_gelu
    fc2  (output: static residual)      d_gelu

The residual stream, softmax outputs (``2**-b``) and the Q12 GELU input keep
their static scales; residual multipliers of proj/fc2 are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from simulator.jit import horner_log2, kernel, normalise_statistic, statistic_rank
from simulator.qvit import Block, ScalePredictorQ
from simulator.scale_predictor import PREDICTED_BOUNDARIES, scale_multiplier, scale_shift

__all__ = ["predict_log2", "block_params", "BlockParams", "N_PER_BLOCK"]

N_PER_BLOCK = len(PREDICTED_BOUNDARIES)


@kernel
def _predict(codes, permille, center, norm_shift, coeffs, stats, out):
    b, n = codes.shape
    rank = statistic_rank(np.int64(n), permille)
    for i in range(b):
        a = np.abs(codes[i].astype(np.int64))
        a.sort()
        s = a[rank]
        stats[i] = s
        x = normalise_statistic(s, center, norm_shift)
        for j in range(coeffs.shape[0]):
            out[i, j] = horner_log2(x, coeffs[j, 0], coeffs[j, 1], coeffs[j, 2], coeffs[j, 3])


def predict_log2(x0_codes: np.ndarray, sp: ScalePredictorQ) -> tuple[np.ndarray, np.ndarray]:
    """(statistic [B], predicted log2 ratios [B, depth*7] in Q15) of a batch of x0 codes [B, T, D]."""
    c = np.ascontiguousarray(x0_codes.reshape(len(x0_codes), -1))
    stats = np.empty(len(c), dtype=np.int64)
    out = np.empty((len(c), len(sp.coeffs)), dtype=np.int64)
    _predict(c, np.int64(sp.permille), np.int64(sp.center), np.int64(sp.norm_shift),
             np.ascontiguousarray(sp.coeffs, dtype=np.int64), stats, out)
    return stats, out


@dataclass
class BlockParams:
    """Per-image parameters of one block: arrays [B, ...] (numpy or torch)."""

    n1_gamma: Any
    n1_beta: Any
    n1_shift: Any
    qkv_mult: Any
    qkv_shift: Any
    sm_mult: Any
    sm_shift: Any
    av_mult: Any
    av_shift: Any
    proj_mult: Any
    proj_shift: Any
    n2_gamma: Any
    n2_beta: Any
    n2_shift: Any
    fc1_mult: Any
    fc1_shift: Any
    gelu_mult: Any
    gelu_shift: Any
    fc2_mult: Any
    fc2_shift: Any


def _scaled(mult, shift, g):
    return scale_multiplier(mult, shift, g), scale_shift(shift, g)


def block_params(b: Block, d, asarray: Callable, cat: Callable) -> BlockParams:
    """Per-image multipliers of block ``b`` from its log2 ratios ``d`` [B, 7] (Q15).

    ``asarray`` converts a frozen numpy array to the caller's array type and
    ``cat(list)`` concatenates along the last axis (np.concatenate / torch.cat).
    Vector multipliers come out [B, n]; scalar ones [B, 1].
    """
    n1, q, k, v, ao, n2, ge = (d[:, j:j + 1] for j in range(N_PER_BLOCK))
    dim = b.norm1.gamma_mult.shape[0]
    qm, qs = asarray(b.qkv.out_mult), asarray(b.qkv.out_shift)
    parts = [_scaled(qm[i * dim:(i + 1) * dim], qs[i * dim:(i + 1) * dim], n1 - t)
             for i, t in enumerate((q, k, v))]
    n1g, n2g = -n1, -n2
    sm = _scaled(b.softmax.in_mult, b.softmax.in_shift, q + k)
    av = _scaled(b.av.mult, b.av.shift, v - ao)
    proj = _scaled(asarray(b.proj.out_mult), asarray(b.proj.out_shift), ao)
    fc1 = _scaled(asarray(b.fc1.out_mult), asarray(b.fc1.out_shift), n2)
    gelu = _scaled(b.gelu.out_mult, b.gelu.out_shift, -ge)
    fc2 = _scaled(asarray(b.fc2.out_mult), asarray(b.fc2.out_shift), ge)
    return BlockParams(
        n1_gamma=scale_multiplier(asarray(b.norm1.gamma_mult), 0, n1g),
        n1_beta=scale_multiplier(asarray(b.norm1.beta_q), 0, n1g),
        n1_shift=scale_shift(b.norm1.out_shift, n1g),
        qkv_mult=cat([p[0] for p in parts]), qkv_shift=cat([p[1] for p in parts]),
        sm_mult=sm[0], sm_shift=sm[1], av_mult=av[0], av_shift=av[1],
        proj_mult=proj[0], proj_shift=proj[1],
        n2_gamma=scale_multiplier(asarray(b.norm2.gamma_mult), 0, n2g),
        n2_beta=scale_multiplier(asarray(b.norm2.beta_q), 0, n2g),
        n2_shift=scale_shift(b.norm2.out_shift, n2g),
        fc1_mult=fc1[0], fc1_shift=fc1[1], gelu_mult=gelu[0], gelu_shift=gelu[1],
        fc2_mult=fc2[0], fc2_shift=fc2[1])


def np_block_params(b: Block, d: np.ndarray) -> BlockParams:
    """`block_params` on numpy int64 arrays."""
    return block_params(b, np.asarray(d, dtype=np.int64), lambda a: np.asarray(a, dtype=np.int64),
                        lambda xs: np.concatenate(xs, axis=-1))


def predictor_records(q) -> list:
    """Trace records of the predictor (kind ``scale_predictor``, per image).

    ``scale_predictor.statistic``: the order statistic scans the ``T*D`` x0
    codes (read at ``residual_bits``). ``scale_predictor.multipliers``: Horner
    steps (``degree`` per predicted boundary) plus every multiplier word
    rescaled per image (LayerNorm G and B, per-channel linear multipliers,
    softmax/av/GELU scalars), 32-bit words read and written; ``rows`` = one
    2**-f mantissa per predicted boundary.
    """
    from simulator.trace import LayerRecord

    sp, m = q.extras["scale_predictor"], q.meta
    t, dim = m["num_tokens"], m["embed_dim"]
    words = sum(2 * b.norm1.gamma_mult.size + b.qkv.out_mult.size + 2 + b.proj.out_mult.size
                + 2 * b.norm2.gamma_mult.size + b.fc1.out_mult.size + 1 + b.fc2.out_mult.size for b in q.blocks)
    nb = len(sp.coeffs)
    return [LayerRecord(name="scale_predictor.statistic", kind="scale_predictor", elements=t * dim, rows=1,
                        in_bits=q.residual_bits, out_bits=0),
            LayerRecord(name="scale_predictor.multipliers", kind="scale_predictor",
                        elements=nb * sp.degree + words, rows=nb, in_bits=32, out_bits=32)]
