"""Float early-exit heads on a timm ViT: the module, fitting, files, float evaluation.

An exit head after block ``i`` is ``LayerNorm(class token after block i) ->
Linear(D, classes)``, the same shape as the model's own final ``norm`` +
``head`` (BranchyNet-style side classifiers, Teerapittayanon et al. 2016;
the early-exit ViT setting of APQ/MAQEE, ../shared/seeds/003). The backbone
is never changed: heads are fitted on frozen class-token features, so one
backbone checkpoint serves every recipe.

Two ways to fit them (both start from a copy of the final norm + head, a
good initial point since the class token's statistics drift slowly with depth):

* labels (the bundled default model, ``scripts/train_default_model.py --exits``):
  cross-entropy of every exit on the labels, summed over exits;
* distillation (any user timm model, unlabeled calibration images):
  ``KL(softmax(final logits) || softmax(exit logits))``, summed over exits.

Exit rule (float and integer alike): an image leaves at the first exit whose
max softmax probability reaches that exit's threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from simulator.errors import InputError

__all__ = ["ExitHeads", "class_tokens", "fit_exit_heads", "save_exit_heads", "load_exit_heads",
           "default_exits_after", "float_exit_outputs", "apply_thresholds", "DEFAULT_EXITS_PATH"]

DEFAULT_EXITS_PATH = Path(__file__).resolve().parent / "default_model" / "vit_digits_exits.safetensors"


def default_exits_after(depth: int, every: int = 2) -> tuple[int, ...]:
    """Blocks (0-based) followed by an exit: every ``every`` blocks, never the last one."""
    return tuple(i for i in range(every - 1, depth - 1, every))


class ExitHeads(nn.Module):
    """``len(after)`` heads; head ``j`` reads the class token after block ``after[j]``."""

    def __init__(self, after, embed_dim: int, num_classes: int, eps: float = 1e-6):
        super().__init__()
        self.after = tuple(int(a) for a in after)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim, eps=eps) for _ in self.after)
        self.heads = nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in self.after)

    @classmethod
    def like_final(cls, model: nn.Module, after) -> "ExitHeads":
        """Heads initialised as copies of ``model.norm`` / ``model.head``."""
        h = cls(after, model.head.in_features, model.head.out_features, eps=model.norm.eps)
        with torch.no_grad():
            for n, l in zip(h.norms, h.heads):
                n.load_state_dict(model.norm.state_dict())
                l.load_state_dict(model.head.state_dict())
        return h

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """``tokens[j]`` [B, D] class token after block ``after[j]`` -> exit logits per head."""
        return [h(n(t)) for n, h, t in zip(self.norms, self.heads, tokens)]


@torch.no_grad()
def class_tokens(model: nn.Module, images, batch_size: int = 256) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Class token after every block ([B, D] each) and the final logits, eval mode."""
    model.eval()
    per_block, logits = None, []
    x_all = torch.as_tensor(np.asarray(images, dtype=np.float32))
    for s in range(0, len(x_all), batch_size):
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x_all[s:s + batch_size]))))
        toks = []
        for blk in model.blocks:
            x = blk(x)
            toks.append(x[:, 0])
        logits.append(model.head(model.norm(x[:, 0])))
        per_block = [[t] for t in toks] if per_block is None else [p + [t] for p, t in zip(per_block, toks)]
    return [torch.cat(p) for p in per_block], torch.cat(logits)


def fit_exit_heads(heads: ExitHeads, tokens: list[torch.Tensor], target: torch.Tensor, loss: str,
                   epochs: int = 300, lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0) -> ExitHeads:
    """Fit ``heads`` in place, full batch AdamW on frozen features, deterministic.

    ``tokens[j]`` are the features of head ``j``; ``target`` int labels for
    ``loss="ce"`` or the final head's logits for ``loss="kl"`` (distillation).
    The heads do not share parameters, so the summed loss trains each head
    as if alone (multi-exit training with a frozen backbone).
    """
    if loss not in ("ce", "kl"):
        raise ValueError(f"loss must be 'ce' or 'kl', got {loss!r}")
    torch.manual_seed(seed)
    heads.train()
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    teacher = None if loss == "ce" else F.log_softmax(target.double(), -1).float()
    for _ in range(epochs):
        outs = heads([t.detach() for t in tokens])
        if loss == "ce":
            total = sum(F.cross_entropy(o, target) for o in outs)
        else:
            total = sum(F.kl_div(F.log_softmax(o, -1), teacher, log_target=True, reduction="batchmean")
                        for o in outs)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
    return heads.eval()


def save_exit_heads(heads: ExitHeads, path, info: dict | None = None) -> None:
    """Write heads (float32) + ``after`` and ``info`` as safetensors metadata, atomically."""
    import safetensors.torch

    from simulator.atomic_files import write_bytes

    state = {k: v.detach().float().contiguous() for k, v in heads.state_dict().items()}
    meta = {"after_blocks": json.dumps(list(heads.after)), "info": json.dumps(info or {}, sort_keys=True)}
    write_bytes(path, safetensors.torch.save(state, metadata=meta))


def load_exit_heads(path, model: nn.Module) -> ExitHeads:
    """Read a file written by `save_exit_heads` for ``model``; a bad file is one `InputError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: exit-head file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        after = json.loads(meta["after_blocks"])
    except Exception as e:  # corrupt file or missing metadata
        raise InputError(f"{path}: not an exit-head file ({type(e).__name__})") from None
    depth = len(model.blocks)
    if not isinstance(after, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in after):
        raise InputError(f"{path}: metadata after_blocks: expected a JSON list of integers, "
                         f"got {type(after).__name__}")
    if not after or any(not 0 <= a < depth - 1 for a in after) or list(after) != sorted(set(after)):
        raise InputError(f"{path}: after_blocks {after}: expected increasing blocks in [0, {depth - 2}]")
    heads = ExitHeads(after, model.head.in_features, model.head.out_features, eps=model.norm.eps)
    try:
        heads.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: heads do not fit the model ({str(e).splitlines()[0]})") from None
    for key, value in heads.state_dict().items():
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"{path}: tensor {key!r}: expected finite weights")
    return heads.eval()


@torch.no_grad()
def float_exit_outputs(model: nn.Module, heads: ExitHeads, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float confidences [N, E] and predictions [N, E] of every exit, final predictions [N]."""
    toks, final = class_tokens(model, images)
    outs = heads([toks[a] for a in heads.after])
    probs = [torch.softmax(o.double(), -1) for o in outs]
    conf = torch.stack([p.max(-1).values for p in probs], 1).numpy()
    pred = torch.stack([p.argmax(-1) for p in probs], 1).numpy()
    return conf, pred, final.argmax(-1).numpy()


def apply_thresholds(conf: np.ndarray, exit_pred: np.ndarray, final_pred: np.ndarray, thresholds,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and exit index (``E`` = full depth) of the first exit with ``conf >= threshold``."""
    n, e = conf.shape
    fire = conf >= np.asarray(thresholds, dtype=conf.dtype)[None, :]
    first = np.where(fire.any(1), fire.argmax(1), e)
    pred = np.where(first < e, exit_pred[np.arange(n), np.minimum(first, e - 1)], final_pred)
    return pred, first
