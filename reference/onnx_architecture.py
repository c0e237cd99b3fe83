"""A timm VisionTransformer holding every float param of a QDQ ONNX graph (docs/onnx.md).

    model, arch = model_from_qdq(qdq)              # architecture read from the file (`vit_kwargs`)
    model, arch = model_from_qdq(qdq, timm_model)  # --model: its architecture, the file's params

`reference.onnx_vit_reader` reads the graph's structure and params
(``VitGraph``); here they become timm ``VisionTransformer`` keyword arguments
(`vit_kwargs`; ``num_heads`` from the attention ``Reshape`` or given, never
guessed), a model (`build_vit`: ``pretrained=False``, timm's init skipped) and
its state dict under timm's names (`state_dict_of`, loaded strictly: a key or
shape that does not fit is one line). Last, the model's float function is
checked against the file's (`float_function_gap`: onnxruntime on the graph
with its activation Q/DQ pairs removed, 2 random images): a graph that only
looks like this ViT, or a ``--model`` of the same shapes but another function
(activation, pooling, block type), fails there instead of being simulated
wrongly.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from reference.onnx_vit_reader import Dense, Norm, UnreadableGraph, VitGraph, read_vit
from simulator.errors import InputError

if TYPE_CHECKING:
    from reference.onnx_import import QDQModel

__all__ = ["model_from_qdq", "vit_kwargs", "build_vit", "state_dict_of", "float_function_gap"]

_TIMM_EPS = 1e-6


def _same(values, what: str, r_fail):
    vals = list(values)
    if any(v != vals[0] for v in vals):
        raise r_fail(f"blocks differ in {what} ({sorted(set(map(str, vals)))})")
    return vals[0] if vals else None


def vit_kwargs(g: VitGraph, path: str, num_heads: int | None = None) -> dict:
    """timm ``VisionTransformer`` keyword arguments of ``g`` (plus ``distilled`` and ``norm_eps``)."""
    def fail(what):
        return UnreadableGraph(f"{path}: {what}; pass --model NAME (the timm architecture)")

    dim, in_chans, ph, pw = g.patch.weight.shape
    distilled = len(g.heads) == 2
    sizes = [p.shape[1] for p in g.prefix]
    class_token = bool(sizes) and sizes[0] == 1
    if distilled and sizes != [1, 1]:
        raise fail(f"two heads (distilled DeiT) but prefix tokens {sizes}, expected cls and dist")
    n_prefix = sum(sizes)
    (h, w), grid = g.input_hw, None
    patches = None if g.pos_embed is None else g.pos_embed.shape[1] - (0 if g.no_embed_class else n_prefix)
    if h and w:
        grid = (h // ph, w // pw)
        if patches is not None and grid[0] * grid[1] != patches:
            raise fail(f"pos_embed holds {patches} patch tokens, the {h}x{w} input gives {grid[0]}x{grid[1]}")
    elif patches is not None and round(patches ** 0.5) ** 2 == patches:
        grid = (round(patches ** 0.5),) * 2
        h, w = grid[0] * ph, grid[1] * pw
    else:
        raise fail("the image size is not in the file (dynamic H/W input and no square pos_embed)")
    heads = {b.num_heads for b in g.blocks} - {None}
    if num_heads is None:
        if len(heads) != 1:
            raise InputError(f"{path}: cannot determine num_heads from the attention Reshape shapes "
                             f"({sorted(heads) or 'not constant'}); pass --num-heads H or --model NAME")
        num_heads = heads.pop()
    elif heads and heads != {num_heads}:
        raise InputError(f"{path}: --num-heads {num_heads}, the file's attention Reshape has {sorted(heads)}")
    if dim % num_heads:
        raise InputError(f"{path}: --num-heads {num_heads} does not divide embed_dim {dim}")
    hidden = _same((b.fc1.weight.shape[0] for b in g.blocks), "mlp hidden size", fail) or 4 * dim
    ratio = hidden / dim if int(dim * (hidden / dim)) == hidden else (hidden + 0.5) / dim
    norms = [g.norm_pre, g.norm, g.fc_norm] + [n for b in g.blocks for n in (b.norm1, b.norm2)]
    eps = _same((n.eps for n in norms if n is not None), "LayerNorm epsilon", fail) or _TIMM_EPS
    kw = dict(img_size=h if h == w else (h, w), patch_size=ph if ph == pw else (ph, pw), in_chans=int(in_chans),
              num_classes=int(g.heads[0].weight.shape[0]) if g.heads else 0, global_pool=g.pool,
              embed_dim=int(dim), depth=len(g.blocks), num_heads=int(num_heads), mlp_ratio=ratio,
              qkv_bias=_same((b.qkv.bias is not None for b in g.blocks), "qkv bias", fail) is not False,
              proj_bias=_same((b.proj.bias is not None for b in g.blocks), "proj bias", fail) is not False,
              init_values=1.0 if _same((b.ls1 is not None for b in g.blocks), "LayerScale", fail) else None,
              class_token=class_token, reg_tokens=0 if distilled else n_prefix - int(class_token),
              pos_embed="learn" if g.pos_embed is not None else "none",
              no_embed_class=g.no_embed_class and n_prefix > 0,
              pre_norm=g.norm_pre is not None, final_norm=g.norm is not None or g.fc_norm is not None,
              fc_norm=g.fc_norm is not None,
              pool_include_prefix=g.pool_include_prefix,
              act_layer=_same((b.act for b in g.blocks), "activation", fail) or "gelu")
    return kw | {"distilled": distilled, "norm_eps": eps}


def build_vit(kwargs: dict, data_config: dict):
    """timm ``VisionTransformer`` (or ``VisionTransformerDistilled``) of ``vit_kwargs``, init skipped."""
    from timm.layers import LayerNorm
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    kw = {k: v for k, v in kwargs.items() if k not in ("distilled", "norm_eps")}
    if kwargs["norm_eps"] != _TIMM_EPS:
        kw["norm_layer"] = partial(LayerNorm, eps=kwargs["norm_eps"])
    cls = VisionTransformerDistilled if kwargs["distilled"] else VisionTransformer
    model = cls(**kw, weight_init="skip")
    model.pretrained_cfg = dict(data_config)
    return model.eval()


def _dense(sd: dict, name: str, d: Dense | None) -> None:
    if d is not None:
        sd[f"{name}.weight"] = d.weight
        if d.bias is not None:
            sd[f"{name}.bias"] = d.bias


def _norm(sd: dict, name: str, n: Norm | None) -> None:
    if n is not None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = n.weight, n.bias


def state_dict_of(g: VitGraph, model, path: str) -> dict:
    """``g``'s params under ``model``'s timm names (numpy float32); a key or shape that does not fit is a
    one-line `InputError` (the file and the model are different architectures)."""
    sd = {}
    _dense(sd, "patch_embed.proj", g.patch)
    names = [n for n in ("cls_token", "dist_token", "reg_token") if getattr(model, n, None) is not None]
    want = [int(getattr(model, n).shape[1]) for n in names]
    have = sum(p.shape[1] for p in g.prefix)
    if sum(want) != have:
        raise InputError(f"{path}: {have} prefix tokens (cls/dist/register) in the file, "
                         f"the model has {sum(want)}")
    if names:
        tokens = np.concatenate(g.prefix, axis=1)
        for name, start, n in zip(names, np.cumsum([0] + want), want):
            sd[name] = tokens[:, start:start + n]
    if g.pos_embed is not None:
        sd["pos_embed"] = g.pos_embed
    _norm(sd, "norm_pre", g.norm_pre)
    for i, b in enumerate(g.blocks):
        p = f"blocks.{i}"
        _norm(sd, f"{p}.norm1", b.norm1)
        _dense(sd, f"{p}.attn.qkv", b.qkv)
        _dense(sd, f"{p}.attn.proj", b.proj)
        _norm(sd, f"{p}.norm2", b.norm2)
        _dense(sd, f"{p}.mlp.fc1", b.fc1)
        _dense(sd, f"{p}.mlp.fc2", b.fc2)
        for k, gamma in (("ls1", b.ls1), ("ls2", b.ls2)):
            if gamma is not None:
                sd[f"{p}.{k}.gamma"] = gamma
    _norm(sd, "norm", g.norm)
    _norm(sd, "fc_norm", g.fc_norm)
    for name, d in zip(("head", "head_dist"), g.heads):
        _dense(sd, name, d)
    expected = model.state_dict()
    for key, t in expected.items():
        if key not in sd:
            raise InputError(f"{path}: the model has {key} {tuple(t.shape)}, the file has no such tensor "
                             "(another architecture)")
        if tuple(sd[key].shape) != tuple(t.shape):
            raise InputError(f"{path}: {key}: shape {tuple(sd[key].shape)} in the file, "
                             f"{tuple(t.shape)} in the model")
    extra = [k for k in sd if k not in expected]
    if extra:
        raise InputError(f"{path}: the file has {extra[0]} {tuple(sd[extra[0]].shape)}, the model has no such "
                         "tensor (another architecture)")
    return sd


def float_function_gap(m: "QDQModel", model, images: np.ndarray) -> float:
    """max |torch model - onnxruntime| / max |onnxruntime| on ``images``, onnxruntime running the file
    with its activation Q/DQ pairs removed (the float function of the file's dequantized weights)."""
    import torch
    from onnx import helper

    from simulator.onnx_session import ort_session

    f = m.model.__class__()
    f.CopyFrom(m.model)
    prod = {o: n for n in f.graph.node for o in n.output}
    skip = {}
    for n in f.graph.node:
        q = prod.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            skip[n.output[0]] = q.input[0]
    keep = [n for n in f.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in skip)]
    for n in keep:
        for j, i in enumerate(n.input):
            if i in skip:
                n.input[j] = skip[i]
    keep += [helper.make_node("Identity", [skip[o.name]], [o.name]) for o in f.graph.output if o.name in skip]
    del f.graph.node[:]
    f.graph.node.extend(keep)
    sess = ort_session(f.SerializeToString(), optimize=False)
    batch = sess.get_inputs()[0].shape[0]
    images = images[:batch] if isinstance(batch, int) and batch > 0 else images
    ref = sess.run(None, {sess.get_inputs()[0].name: images})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(images)).numpy()
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))


_FLOAT_GAP = 1e-3      # float32 torch vs float32 onnxruntime on the same weights: ~1e-6 measured


def model_from_qdq(m: "QDQModel", model=None, num_heads: int | None = None, data_config: dict | None = None):
    """(timm model holding every float param of the file, architecture record). ``model`` given: its
    architecture (a copy; its own params are replaced), else `vit_kwargs` built with `build_vit`."""
    import torch

    g = read_vit(m)
    if model is None:
        kwargs = vit_kwargs(g, m.path, num_heads)
        chans, hw = kwargs["in_chans"], kwargs["img_size"]
        hw = (hw, hw) if isinstance(hw, int) else hw
        cfg = {"input_size": (chans, *hw), "mean": (0.5,) * chans, "std": (0.5,) * chans,
               "interpolation": "bicubic", "crop_pct": 0.9} | dict(data_config or {})
        model, source = build_vit(kwargs, cfg), "onnx"
    else:
        model, source = copy.deepcopy(model).float().eval(), "model"
        heads = {b.num_heads for b in g.blocks} - {None}
        have = getattr(getattr(getattr(model, "blocks", [None])[0], "attn", None), "num_heads", None)
        if heads and have is not None and heads != {have}:
            raise InputError(f"{m.path}: the model has {have} attention heads, the file's attention Reshape "
                             f"{sorted(heads)}")
        kwargs = None
    sd = state_dict_of(g, model, m.path)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in sd.items()})
    size = tuple(model.patch_embed.img_size)
    shape = (2, model.patch_embed.proj.in_channels, *size)
    images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    gap = float_function_gap(m, model, images)
    if not gap <= _FLOAT_GAP:
        what, hint = (("the inferred architecture", "pass --model NAME") if source == "onnx" else
                      ("the model's architecture", "another activation, pooling or block type than the model's"))
        raise InputError(f"{m.path}: {what} with the file's params does not compute the file's float function "
                         f"(max relative difference {gap:.3g} on 2 random images); {hint}")
    return model, {"source": source, "kwargs": kwargs, "float_gap": gap, "params": len(sd)}
