"""FLOPs of a timm model counted by torch (the reference the shape-only MAC counts are checked against)."""

from __future__ import annotations


def timm_flops(model, image_size: int) -> int:
    """FLOPs of one ``image_size`` image through a timm model, counted by torch's FlopCounterMode
    on timm's explicit attention path: the fused path calls F.scaled_dot_product_attention,
    whose CPU kernel FlopCounterMode does not count in every torch release, while the explicit
    path (q @ k^T, softmax, attn @ v) is the same arithmetic and is always counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops()
