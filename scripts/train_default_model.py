"""Train the bundled default model ``vit_digits`` and write its weights and JSON config.

A small timm VisionTransformer (8x8x1 input, 2x2 patches, 6 blocks of width 96,
3 heads) trained on the scikit-learn digits train split (1437 images) and
evaluated on the held-out test split (360 images). The run is deterministic:
fixed seeds, deterministic torch algorithms, 2 threads, a seeded generator for
shuffling and for the +-1 pixel shift augmentation.

Outputs (written to temp files, then renamed, so nothing is half-written):

* ``<out>/vit_digits.safetensors`` -- weights stored as float16 (float32 would
  be 2.7 MB; float16 halves it), loaded back as float32 by `load_model`;
* ``<out>/vit_digits.json`` -- VisionTransformer kwargs, data config
  (input size, mean/std), split description, seeds, training settings and the
  test accuracy measured here with the float16-rounded weights.

The mean/std below are the source of the numbers in the JSON config; at run
time `reference.data.load_digits` reads them from the JSON only.

Second, separate phase (``--exits``): early-exit heads for the APQ/MAQEE
recipe (`train_exit_heads`), written to ``<out>/vit_digits_exits.safetensors``
(a few KB, config in its metadata). The backbone is loaded from
``<out>/vit_digits.safetensors`` and kept FROZEN: one shared backbone
checkpoint serves every recipe and every branch measures against it, so the
heads are trained on its fixed class-token features (digits train labels,
the seeded +-1 pixel shifts as augmentation), never the other way round.

Usage: ``python scripts/train_default_model.py [--epochs 200] [--out DIR]``
       ``python scripts/train_default_model.py --exits [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from reference.data import (  # noqa: E402  (needs REPO_ROOT on sys.path)
    CALIB_SEED, CALIB_SIZE, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, digits_pixels,
)
from reference.models import DEFAULT_MODEL, build_vision_transformer  # noqa: E402

MODEL_KWARGS = {
    "img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10,
    "embed_dim": 96, "depth": 6, "num_heads": 3, "mlp_ratio": 4.0,
    "class_token": True, "global_pool": "token",
}
DIGITS_MEAN = 0.5  # normalised image = (pixel / 16 - mean) / std
DIGITS_STD = 0.5
DATA_CONFIG = {
    "input_size": [1, 8, 8], "mean": [DIGITS_MEAN], "std": [DIGITS_STD],
    "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
}
WEIGHTS_DTYPE = torch.float16


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run, recorded verbatim in the JSON config."""

    epochs: int = 200
    batch_size: int = 64
    max_lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    max_shift_pixels: int = 1
    model_init_seed: int = 0
    shuffle_seed: int = 0
    torch_threads: int = 2


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """Map digits pixels in [0, 1] to model inputs with this script's mean/std."""
    return torch.from_numpy((pixels - DIGITS_MEAN) / DIGITS_STD).float()


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a seeded random (dy, dx) in [-max_shift, max_shift], filling with background."""
    if max_shift == 0:
        return images
    background = (0.0 - DIGITS_MEAN) / DIGITS_STD
    height, width = images.shape[-2:]
    padded = F.pad(images, [max_shift] * 4, value=background)
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    shifted = torch.empty_like(images)
    for row, (dy, dx) in enumerate(offsets.tolist()):
        shifted[row] = padded[row, :, dy:dy + height, dx:dx + width]
    return shifted


def train_classifier(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: TrainSettings
) -> None:
    """Train `model` in place: AdamW + one-cycle LR, label smoothing, seeded shuffles and shifts."""
    generator = torch.Generator().manual_seed(settings.shuffle_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.max_lr, weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(labels) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.max_lr, epochs=settings.epochs, steps_per_epoch=steps_per_epoch
    )
    start = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        loss_sum, correct = 0.0, 0
        for batch in order.split(settings.batch_size):
            inputs = random_shift(images[batch], settings.max_shift_pixels, generator)
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels[batch], label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(1) == labels[batch]).sum().item()
        if epoch == 1 or epoch % 10 == 0 or epoch == settings.epochs:
            print(
                f"epoch {epoch:4d}/{settings.epochs}  loss {loss_sum / len(labels):.4f}  "
                f"train acc {correct / len(labels):.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - start:6.1f}s",
                flush=True,
            )


@dataclass(frozen=True)
class ExitSettings:
    """The exit-head phase: heads after blocks 1 and 3 of 6 (every 2 blocks, 0-based)."""

    after_blocks: tuple = (1, 3)
    epochs: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    shifted_copies: int = 4
    seed: int = 0


def train_exit_heads(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     settings: ExitSettings):
    """Multi-exit training of the heads on the FROZEN backbone (summed cross-entropy).

    Features: the class token after each exit's block for the images and
    ``shifted_copies`` seeded random shifts of them. The backbone is frozen
    because its checkpoint is shared by every recipe (see the module docstring).
    """
    from reference.exits import ExitHeads, class_tokens, fit_exit_heads

    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(settings.seed)
    views = [images] + [random_shift(images, 1, generator) for _ in range(settings.shifted_copies)]
    feats = [class_tokens(model, v.numpy())[0] for v in views]
    tokens = [torch.cat([f[a] for f in feats]) for a in settings.after_blocks]
    target = labels.repeat(len(views))
    heads = ExitHeads.like_final(model, settings.after_blocks)
    return fit_exit_heads(heads, tokens, target, "ce", epochs=settings.epochs, lr=settings.lr,
                          weight_decay=settings.weight_decay, seed=settings.seed)


def exits_main(out_dir: Path) -> int:
    """Load the stored backbone, train the exit heads, report their accuracy, write the file."""
    from reference.exits import float_exit_outputs, save_exit_heads
    from reference.models import load_model

    settings = ExitSettings()
    torch.set_num_threads(TrainSettings.torch_threads)
    torch.use_deterministic_algorithms(True)
    model = load_model(checkpoint=out_dir / f"{DEFAULT_MODEL}.safetensors")
    train_pixels, train_labels = digits_pixels("train")
    test_pixels, test_labels = digits_pixels("test")
    heads = train_exit_heads(model, normalise(train_pixels), torch.from_numpy(train_labels), settings)
    conf, pred, final = float_exit_outputs(model, heads, normalise(test_pixels).numpy())
    acc = {f"exit_after_block_{a}": round(float((pred[:, j] == test_labels).mean()), 6)
           for j, a in enumerate(settings.after_blocks)}
    acc["final"] = round(float((final == test_labels).mean()), 6)
    print(f"exit heads after blocks {settings.after_blocks}: test top-1 {acc}")
    path = out_dir / f"{DEFAULT_MODEL}_exits.safetensors"
    save_exit_heads(heads, path, {"training": asdict(settings), "test_accuracy": acc,
                                  "backbone": f"{DEFAULT_MODEL}.safetensors (frozen)"})
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} KB)")
    return 0


@torch.no_grad()
def top1_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose arg-max logit is the label (eval mode)."""
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def storage_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as it is stored on disk: floating tensors cast to WEIGHTS_DTYPE, contiguous."""
    return {
        key: (value.to(WEIGHTS_DTYPE) if value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }


def build_config(settings: TrainSettings, test_accuracy: float) -> dict:
    """The JSON config shipped beside the weights: architecture, data, split, seeds, result.

    Nothing run-dependent (no timings, no paths), so a rerun reproduces it byte for byte.
    """
    return {
        "name": DEFAULT_MODEL,
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "model_kwargs": MODEL_KWARGS,
        "data_config": DATA_CONFIG,
        "weights_dtype": str(WEIGHTS_DTYPE).removeprefix("torch."),
        "dataset": {
            "source": "sklearn.datasets.load_digits (8x8, pixels 0..16)",
            "normalisation": "(pixel / 16 - mean) / std",
            "split": (
                f"train_test_split(test_size={DIGITS_TEST_FRACTION}, stratify=y, "
                f"random_state={DIGITS_SPLIT_SEED})"
            ),
            "calib": f"first {CALIB_SIZE} of numpy default_rng({CALIB_SEED}).permutation(train)",
            "train_images": 1437,
            "test_images": 360,
        },
        "training": asdict(settings),
        "test_accuracy": round(test_accuracy, 6),
    }


def write_outputs(out_dir: Path, state_dict: dict, config: dict, name: str = DEFAULT_MODEL) -> tuple[Path, Path]:
    """Write ``<name>.safetensors`` and ``<name>.json`` to temp files in `out_dir`, then rename both into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{name}.safetensors"
    config_path = out_dir / f"{name}.json"
    weights_tmp = weights_path.with_name(weights_path.name + ".tmp")
    config_tmp = config_path.with_name(config_path.name + ".tmp")
    safetensors.torch.save_file(state_dict, str(weights_tmp), metadata={"format": "pt"})
    os.chmod(weights_tmp, 0o644)  # safetensors creates 0600 files; this one ships with the package
    config_tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    os.replace(weights_tmp, weights_path)
    os.replace(config_tmp, config_path)
    return weights_path, config_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags: --epochs and --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs, help="training epochs")
    parser.add_argument("--exits", action="store_true",
                        help="only train the exit heads on the stored, frozen backbone")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "reference" / "default_model",
        help="output directory for vit_digits.safetensors and vit_digits.json",
    )
    args = parser.parse_args(argv)
    if args.epochs <= 0:
        parser.error(f"--epochs: expected a positive integer, got {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate with the stored (float16-rounded) weights, and write the outputs."""
    args = parse_args(argv)
    if args.exits:
        return exits_main(args.out)
    settings = TrainSettings(epochs=args.epochs)
    torch.set_num_threads(settings.torch_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(settings.model_init_seed)

    train_pixels, train_labels = digits_pixels("train")
    test_pixels, test_labels = digits_pixels("test")
    model = build_vision_transformer(MODEL_KWARGS, DATA_CONFIG)
    print(f"{DEFAULT_MODEL}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train_labels)} train / {len(test_labels)} test images", flush=True)

    start = time.perf_counter()
    train_classifier(model, normalise(train_pixels), torch.from_numpy(train_labels), settings)
    train_seconds = time.perf_counter() - start

    state_dict = storage_state_dict(model)
    model.load_state_dict({key: value.float() for key, value in state_dict.items()})
    test_accuracy = top1_accuracy(model, normalise(test_pixels), torch.from_numpy(test_labels))
    print(f"training took {train_seconds:.1f}s; test top-1 ({settings.epochs} epochs, "
          f"{str(WEIGHTS_DTYPE).removeprefix('torch.')} weights): {test_accuracy:.4f}")

    weights_path, config_path = write_outputs(
        args.out, state_dict, build_config(settings, test_accuracy)
    )
    print(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB) and {config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
