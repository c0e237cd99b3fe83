"""Test support: a ViT trace built from shapes alone, laid out exactly as the
integer executor records it (see simulator/trace.py and the hwmodels brief),
so the hwmodels tests do not depend on the executors.
"""

from __future__ import annotations

import numpy as np

from simulator.trace import LayerRecord, Trace

RESIDUAL_BITS = 16


def vit_layers(depth: int, dim: int, heads: int, tokens: int, mlp: int, classes: int,
               *, patch_dim: int = 768, w_bits: int = 8, a_bits: int = 8,
               attn_bits: int | None = None) -> list[LayerRecord]:
    """Layer records of one image through a ViT (T tokens incl. cls)."""
    T, D, H, F, C, P = tokens, dim, heads, mlp, classes, patch_dim
    d, Np = D // H, tokens - 1
    ab = attn_bits or a_bits

    def linear(name, m, k, n, out_bits=a_bits, bits_w=w_bits):
        return LayerRecord(name, "linear", m=m, k=k, n=n, a_bits=a_bits, b_bits=bits_w,
                           b_is_weight=True, out_bits=out_bits,
                           weight_bytes=k * n * bits_w // 8 + 4 * n)

    L = [
        LayerRecord("quantize_input", "quantize_input", elements=Np * P, rows=Np,
                    in_bits=32, out_bits=a_bits),
        linear("patch_embed", Np, P, D, out_bits=RESIDUAL_BITS),
        LayerRecord("pos_embed", "add", elements=T * D, rows=T, in_bits=RESIDUAL_BITS,
                    out_bits=RESIDUAL_BITS),
    ]
    for i in range(depth):
        b = f"blocks.{i}"
        L += [
            LayerRecord(f"{b}.norm1", "layernorm", elements=T * D, rows=T,
                        in_bits=RESIDUAL_BITS, out_bits=a_bits),
            linear(f"{b}.attn.qkv", T, D, 3 * D),
            LayerRecord(f"{b}.attn.qk", "matmul", m=T, k=d, n=T, batch=H, a_bits=ab,
                        b_bits=ab, out_bits=32),
            LayerRecord(f"{b}.attn.softmax", "softmax", elements=H * T * T, rows=H * T,
                        in_bits=32, out_bits=ab),
            LayerRecord(f"{b}.attn.av", "matmul", m=T, k=T, n=d, batch=H, a_bits=ab,
                        b_bits=ab, out_bits=a_bits),
            linear(f"{b}.attn.proj", T, D, D, out_bits=RESIDUAL_BITS),
            LayerRecord(f"{b}.add1", "add", elements=T * D, rows=T, in_bits=RESIDUAL_BITS,
                        out_bits=RESIDUAL_BITS, fused_into=f"{b}.attn.proj"),
            LayerRecord(f"{b}.norm2", "layernorm", elements=T * D, rows=T,
                        in_bits=RESIDUAL_BITS, out_bits=a_bits),
            linear(f"{b}.mlp.fc1", T, D, F, out_bits=32),
            LayerRecord(f"{b}.mlp.gelu", "gelu", elements=T * F, rows=T, in_bits=32,
                        out_bits=a_bits),
            linear(f"{b}.mlp.fc2", T, F, D, out_bits=RESIDUAL_BITS),
            LayerRecord(f"{b}.add2", "add", elements=T * D, rows=T, in_bits=RESIDUAL_BITS,
                        out_bits=RESIDUAL_BITS, fused_into=f"{b}.mlp.fc2"),
        ]
    L += [
        LayerRecord("norm", "layernorm", elements=D, rows=1, in_bits=RESIDUAL_BITS, out_bits=a_bits),
        linear("head", 1, D, C, out_bits=RESIDUAL_BITS),
    ]
    return L


def vit_trace(depth=12, dim=192, heads=3, tokens=197, mlp=768, classes=1000, *,
              n_images=1, layer_ran=None, model="synthetic", recipe="static", **bits) -> Trace:
    layers = vit_layers(depth, dim, heads, tokens, mlp, classes, **bits)
    return Trace(model=model, recipe=recipe, layers=layers, n_images=n_images,
                 layer_ran=None if layer_ran is None else np.asarray(layer_ran, dtype=bool))


def deit_tiny(**kw) -> Trace:
    return vit_trace(12, 192, 3, 197, 768, 1000, model="deit_tiny_patch16_224", **kw)


def deit_small(**kw) -> Trace:
    return vit_trace(12, 384, 6, 197, 1536, 1000, model="deit_small_patch16_224", **kw)


def early_exit_mask(trace: Trace, exit_blocks: list[int]) -> np.ndarray:
    """[images, layers] mask: image i runs blocks < exit_blocks[i] (+ stem, and
    the final norm/head only when it reaches the last block)."""
    depth = 1 + max(int(r.name.split(".")[1]) for r in trace.layers if r.name.startswith("blocks."))
    mask = np.ones((len(exit_blocks), len(trace.layers)), dtype=bool)
    for i, e in enumerate(exit_blocks):
        for j, r in enumerate(trace.layers):
            if r.name.startswith("blocks."):
                mask[i, j] = int(r.name.split(".")[1]) < e
            elif r.name in ("norm", "head"):
                mask[i, j] = e >= depth
    return mask


def tiny_npu_dict(rows=4, cols=4, dataflow="weight_stationary", fold_overlap="per_fold",
                  sram_bytes=1024, double_buffering=True, precisions=None) -> dict:
    """A small NPU whose costs are easy to compute by hand (1 GHz: 1 ns per cycle)."""
    return {
        "name": "tiny",
        "clock_mhz": 1000,
        "double_buffering": double_buffering,
        "static_power_mw": 1.0,
        "pe_array": {
            "rows": rows, "cols": cols, "dataflow": dataflow, "fold_overlap": fold_overlap,
            "acc_bits": 32,
            "precisions": precisions or [
                {"w_bits": 8, "a_bits": 8, "macs_per_pe_per_cycle": 1, "energy_per_mac_pj": 0.5}],
        },
        "memories": {
            "dram": {"size_bytes": 1 << 20, "bandwidth_bytes_per_cycle": 1,
                     "read_energy_pj_per_byte": 10.0, "write_energy_pj_per_byte": 10.0},
            "sram": {"size_bytes": sram_bytes, "bandwidth_bytes_per_cycle": 8,
                     "read_energy_pj_per_byte": 1.0, "write_energy_pj_per_byte": 2.0},
            "regs": {"size_bytes": rows * cols * 8, "bandwidth_bytes_per_cycle": 64,
                     "read_energy_pj_per_byte": 0.1, "write_energy_pj_per_byte": 0.1},
        },
        "sfus": {
            "softmax": {"lanes": 2, "cycles_per_element": 3, "cycles_per_row": 5,
                        "energy_per_element_pj": 1.0},
            "gelu": {"lanes": 4, "cycles_per_element": 1},
            "layernorm": {"lanes": 2, "cycles_per_element": 2, "cycles_per_row": 10},
            "requant": {"lanes": 4, "cycles_per_element": 1, "energy_per_element_pj": 0.25},
        },
    }
