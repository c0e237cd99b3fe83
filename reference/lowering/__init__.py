"""Lowering: a timm Vision Transformer -> the typed float graph (`simulator.ir`).

Why a registry of rules keyed by module type, not torch.fx / torch.export:

* **Module semantics are the point.** Quantizer placement, folding
  (LayerScale into the preceding linear, the patch conv into a linear on
  patches) and boundary names (``blocks.3.attn``) are decisions about timm
  modules. An fx/export graph flattens them into aten ops
  (``aten.linear``, ``aten.mul``, ``aten.scaled_dot_product_attention``,
  reshapes and permutes) and we would pattern-match the modules back.
* **timm's forward has switches that tracing specialises silently.**
  ``fused_attn`` picks SDPA or the explicit softmax path; ``dynamic_img_size``
  resamples the position embedding per input size (bicubic, data-dependent
  on the input shape); ``training`` / ``distilled_training`` change the
  output of DeiT; timm marks helpers as not traceable
  (``register_notrace_function``). A trace records whichever branch the
  example took, with no error when another input would take another.
* **Refusal must name the module.** A rule lookup that fails knows the
  module path and type (``blocks.3.attn: differential attention ...``);
  an unmatched aten pattern does not.
* **Nothing dropped silently.** Each rule runs in a `Scope` that checks every
  child module and direct parameter of its module was used, so a new timm
  option that adds a child (a gate, a norm) is refused, not ignored.

The cost: a rule per module type, written from timm's ``forward``, and a
test comparing the lowered graph with timm's own forward on every
supported configuration (``tests/reference/test_lowering.py``).
"""

from __future__ import annotations

import torch.nn as nn

from reference.lowering import blocks, layers, swin, vit  # noqa: F401  (register the rules)
from reference.lowering.builder import Builder, LoweringError, lowering_rule, refuse, registered_types
from reference.lowering.vit import resolve_image_size
from simulator import ir

__all__ = ["lower", "LoweringError", "lowering_rule", "refuse", "registered_types"]


def _check_eval(model: nn.Module) -> None:
    for path, m in model.named_modules():
        if m.training:
            raise LoweringError(f"{path or 'model'}: in training mode (dropout, drop-path and DeiT's "
                                f"distillation output act); call model.eval() first")


def lower(model: nn.Module, image_size=None) -> ir.Graph:
    """The float graph of ``model``'s eval-mode forward for images of
    ``image_size`` (H, W) -- default: the model's own size. Raises
    `LoweringError` (an `InputError`) naming the module path and the
    construct for anything the graph cannot express."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.swin_transformer_v2 import SwinTransformerV2
    from timm.models.vision_transformer import VisionTransformer
    if isinstance(model, SwinTransformerV2):
        raise LoweringError("model: Swin V2 (SwinTransformerV2: cosine attention, continuous position bias MLP, "
                            "post-norm blocks) is not supported; Swin V1 (SwinTransformer) is")
    if not isinstance(model, (VisionTransformer, SwinTransformer)):
        raise LoweringError(f"model: {type(model).__module__}.{type(model).__qualname__} is not a timm "
                            f"VisionTransformer or SwinTransformer")
    _check_eval(model)
    if isinstance(model, SwinTransformer):
        (h, w) = swin.check_swin_size(model, image_size)
    else:
        (h, w), _ = resolve_image_size(model, image_size)
    ctx = Builder()
    out = ctx.lower_module(model, "", "images", image_size=(h, w))
    in_chans = getattr(model, "in_chans", None) or model.patch_embed.proj.in_channels
    return ctx.graph("images", (out,), (h, w), in_chans)
