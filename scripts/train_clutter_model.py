"""Train the second bundled model ``vit_clutter``: DeiT-Tiny width at 197 tokens, on cluttered digits.

A timm VisionTransformer (56x56x1 input, 4x4 patches = 196 patches + class
token = 197 tokens, 6 blocks of width 192, 3 heads: DeiT-Tiny's width and
token count, half its depth) trained on `reference.cluttered_digits` -- the
scikit-learn digits train split, each digit re-placed on a fresh cluttered
canvas every epoch (the epoch number seeds the canvases) -- and evaluated on
the 1000-image cluttered test split (test digits only).

Deterministic: fixed seeds, deterministic torch algorithms, 2 threads; the
matmuls run under CPU bfloat16 autocast (1.6x faster than float32 on the
AVX-512-BF16 EPYC this was trained on; the weights stay float32 and are
stored as float16). Outputs are written as by `train_default_model`
(temp file + rename): ``<out>/vit_clutter.safetensors`` and
``<out>/vit_clutter.json`` (architecture, data config, training record,
measured test accuracy with the float16-rounded weights).

Usage: ``python scripts/train_clutter_model.py [--epochs 24] [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from reference import cluttered_digits as clutter  # noqa: E402
from reference.models import build_vision_transformer  # noqa: E402
from train_default_model import WEIGHTS_DTYPE, storage_state_dict, top1_accuracy, write_outputs  # noqa: E402

NAME = "vit_clutter"
MODEL_KWARGS = {
    "img_size": clutter.CANVAS, "patch_size": 4, "in_chans": 1, "num_classes": 10,
    "embed_dim": 192, "depth": 6, "num_heads": 3, "mlp_ratio": 4.0,
    "class_token": True, "global_pool": "token",
}
MEAN, STD = 0.1, 0.2      # normalised image = (pixel - mean) / std; pixels in [0, 1]
DATA_CONFIG = {
    "input_size": [1, clutter.CANVAS, clutter.CANVAS], "mean": [MEAN], "std": [STD],
    "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
}


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run, recorded verbatim in the JSON config."""

    epochs: int = 24
    canvases_per_digit: int = 2          # images per epoch = 2 x 1437 train digits, fresh canvases each epoch
    batch_size: int = 64
    max_lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    model_init_seed: int = 0
    shuffle_seed: int = 0
    torch_threads: int = 2
    autocast: str = "bfloat16"


def normalise(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((pixels - MEAN) / STD).float()


def epoch_images(epoch: int, settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's canvases: every train digit ``canvases_per_digit`` times, seeded by the epoch."""
    count = clutter.SPLIT_SIZES["train"] * settings.canvases_per_digit
    pixels, labels = clutter.cluttered_digits("train", count, seed=1000 + epoch)
    return normalise(pixels), torch.from_numpy(labels)


def train(model: torch.nn.Module, settings: TrainSettings, probe: tuple[torch.Tensor, torch.Tensor]) -> None:
    """AdamW + one-cycle LR with label smoothing; prints train loss/acc and probe accuracy per epoch."""
    generator = torch.Generator().manual_seed(settings.shuffle_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.max_lr, weight_decay=settings.weight_decay)
    per_epoch = clutter.SPLIT_SIZES["train"] * settings.canvases_per_digit
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.max_lr, epochs=settings.epochs,
        steps_per_epoch=-(-per_epoch // settings.batch_size))
    dtype = getattr(torch, settings.autocast)
    start = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        images, labels = epoch_images(epoch, settings)
        model.train()
        loss_sum, correct = 0.0, 0
        for batch in torch.randperm(len(labels), generator=generator).split(settings.batch_size):
            with torch.autocast("cpu", dtype=dtype):
                logits = model(images[batch])
                loss = F.cross_entropy(logits.float(), labels[batch], label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(1) == labels[batch]).sum().item()
        probe_acc = top1_accuracy(model, *probe)
        print(f"epoch {epoch:3d}/{settings.epochs}  loss {loss_sum / len(labels):.4f}  "
              f"train acc {correct / len(labels):.4f}  probe acc {probe_acc:.4f}  "
              f"{time.perf_counter() - start:7.1f}s", flush=True)


def build_config(settings: TrainSettings, test_accuracy: float, train_seconds: float) -> dict:
    return {
        "name": NAME,
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "model_kwargs": MODEL_KWARGS,
        "data_config": DATA_CONFIG,
        "weights_dtype": str(WEIGHTS_DTYPE).removeprefix("torch."),
        "dataset": {
            "source": "reference.cluttered_digits (sklearn digits on 56x56 cluttered canvases)",
            "normalisation": "(pixel - mean) / std, pixels in [0, 1]",
            "train": f"{settings.canvases_per_digit} fresh canvases per train digit per epoch (seed 1000 + epoch)",
            "test_images": clutter.SPLIT_SIZES["test"],
            "calib_images": clutter.SPLIT_SIZES["calib"],
        },
        "training": asdict(settings),
        "test_accuracy": round(test_accuracy, 6),
        "training_minutes_measured": round(train_seconds / 60, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reference" / "default_model")
    args = parser.parse_args(argv)
    if args.epochs <= 0:
        parser.error(f"--epochs: expected a positive integer, got {args.epochs}")
    settings = TrainSettings(epochs=args.epochs)
    torch.set_num_threads(settings.torch_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(settings.model_init_seed)
    model = build_vision_transformer(MODEL_KWARGS, DATA_CONFIG)
    test_pixels, test_labels = clutter.cluttered_digits("test")
    test = normalise(test_pixels), torch.from_numpy(test_labels)
    probe = test[0][:256], test[1][:256]
    print(f"{NAME}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{clutter.SPLIT_SIZES['train'] * settings.canvases_per_digit} canvases per epoch, "
          f"{len(test_labels)} test images", flush=True)
    start = time.perf_counter()
    train(model, settings, probe)
    seconds = time.perf_counter() - start
    state_dict = storage_state_dict(model)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    acc = top1_accuracy(model, *test)
    print(f"training took {seconds / 60:.1f} min; fp32 test top-1 (float16 weights): {acc:.4f}")
    weights, config = write_outputs(args.out, state_dict, build_config(settings, acc, seconds), NAME)
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
