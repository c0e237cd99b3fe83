"""Float reference models: a timm name, a user checkpoint, or the bundled default.

Everything downstream (lowering, calibration, the recipes, the frozen QuantizedGraph) starts
from the float32 eval-mode module returned by `load_model`. Only timm's
`VisionTransformer` family is supported, because the quantized datapath mirrors
its block structure (patch embed -> [LN, MHSA, LN, MLP] x depth -> head).

The bundled default, ``vit_digits``, is a small ViT trained on scikit-learn's
8x8 digits by ``scripts/train_default_model.py``; its architecture, input
normalisation and training record live in ``default_model/vit_digits.json``
beside the weights, so this module never hard-codes them.

Checkpoints are loaded strictly: the first missing, unexpected or mis-shaped
key is reported as one `InputError` line naming the file.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.data import resolve_data_config
from timm.models.vision_transformer import VisionTransformer

from reference.degenerate import check_finite_state_dict
from simulator.bundled_models import BUNDLED_MODELS, DEFAULT_MODEL
from simulator.errors import InputError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_DIR",
    "build_vision_transformer",
    "default_model_config",
    "load_model",
    "load_state_dict_file",
    "model_input_config",
]

log = logging.getLogger(__name__)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

# Wrappers that training scripts commonly put around the real state dict.
_STATE_DICT_WRAPPER_KEYS = ("state_dict", "model", "model_state")
_TORCH_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")
_DATA_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")


def default_model_config(model_dir: str | os.PathLike | None = None, name: str = DEFAULT_MODEL) -> dict:
    """Return a bundled model's JSON config (architecture, data, training record); the default model's
    unless ``name`` is another of `simulator.bundled_models.BUNDLED_MODELS`."""
    config_path = Path(model_dir or DEFAULT_MODEL_DIR) / f"{name}.json"
    try:
        with open(config_path, encoding="utf-8") as config_file:
            config = json.load(config_file)
    except FileNotFoundError:
        raise InputError(
            f"{config_path}: bundled model config not found; "
            "run scripts/train_default_model.py (vit_digits) or scripts/train_clutter_model.py (vit_clutter)"
        ) from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{config_path}: not a readable JSON config ({error})") from None
    for field in ("model_kwargs", "data_config"):
        if not isinstance(config.get(field), dict):
            raise InputError(f"{config_path}: {field}: expected an object")
    return config


def build_vision_transformer(model_kwargs: Mapping, data_config: Mapping) -> VisionTransformer:
    """Build a randomly initialised timm VisionTransformer that carries its own data config.

    The data config is stored as ``model.pretrained_cfg`` so that timm's
    `resolve_data_config` / `create_transform` see the right input size and
    normalisation, exactly as for a model made by `timm.create_model`.
    """
    model = VisionTransformer(**model_kwargs)
    model.pretrained_cfg = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in data_config.items()
    }
    return model


def _create_timm_model(name: str, **kwargs) -> torch.nn.Module:
    """Create a timm model by name (no weights), rejecting unknown and non-ViT names."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models() + list(BUNDLED_MODELS), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(f"unknown model {name!r} (not a timm model name){hint}")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in kwargs.items())
        raise InputError(f"model {name!r} {given}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    from timm.models.swin_transformer import SwinTransformer      # Swin V1: the integer graph only
    if not isinstance(model, (VisionTransformer, SwinTransformer)):
        raise InputError(
            f"model {name!r} is a {type(model).__name__}; only timm's VisionTransformer "
            "family (vit_*, deit_*, ...) and SwinTransformer (swin_*) are supported"
        )
    return model


def _check_tensor_mapping(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Return ``loaded`` as a name -> tensor dict, unwrapping a leftover wrapper (e.g. ``model_state``)."""
    if isinstance(loaded, Mapping):
        for wrapper_key in _STATE_DICT_WRAPPER_KEYS:
            if isinstance(loaded.get(wrapper_key), Mapping):
                loaded = {key.removeprefix("module."): value for key, value in loaded[wrapper_key].items()}
                break
    if not isinstance(loaded, Mapping) or not loaded or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise InputError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return dict(loaded)


def load_state_dict_file(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a .safetensors or .pth/.pt/.bin checkpoint into a flat name -> tensor dict.

    Reading is timm's own `timm.models.load_state_dict` (``weights_only``
    unpickling): it picks the EMA weights (``state_dict_ema`` / ``model_ema``)
    when present, else ``state_dict`` or ``model``, and strips DDP
    ``module.`` / ``torch.compile`` ``_orig_mod.`` prefixes.
    """
    from timm.models import clean_state_dict, load_state_dict as timm_load_state_dict

    path = Path(checkpoint)
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in _TORCH_CHECKPOINT_SUFFIXES:
        raise InputError(
            f"{path}: unsupported checkpoint type {suffix or '(none)'!r}; "
            "expected .safetensors, .pth, .pt or .bin"
        )
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():   # e.g. pickle-protocol notes: the error line is the report
            warnings.simplefilter("ignore")
            if suffix == ".safetensors":   # timm tests the suffix case-sensitively
                loaded = safetensors.torch.load_file(str(path), device="cpu")
                loaded = clean_state_dict(loaded)
            else:
                loaded = timm_load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except AttributeError:   # timm's clean_state_dict on a pickled list/tensor/...: it has no .items()
        raise InputError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)") from None
    except Exception as error:  # truncated/corrupt files raise many different types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: cannot read checkpoint (truncated or corrupted?): {reason}") from None
    return _check_tensor_mapping(loaded, path)


def _format_shape(shape: torch.Size) -> str:
    """Format a shape as a plain tuple, e.g. (10, 192)."""
    return str(tuple(shape)) if len(shape) != 1 else f"({shape[0]},)"


def _check_state_dict_matches(model: torch.nn.Module, state_dict: Mapping, path: Path) -> None:
    """Raise InputError naming the first key (in the model's order) that does not fit."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            raise InputError(f"{path}: missing key {key!r}")
        if state_dict[key].shape != tensor.shape:
            have = state_dict[key].shape
            hint = (f"; pass --num-classes {have[0]}" if key in ("head.weight", "head.bias")
                    and have[1:] == tensor.shape[1:] else "")
            raise InputError(
                f"{path}: key {key!r} has shape {_format_shape(have)}, "
                f"model expects {_format_shape(tensor.shape)}{hint}"
            )
    for key in state_dict:
        if key not in expected:
            raise InputError(f"{path}: unexpected key {key!r}")


def _fit_pos_embed(model: torch.nn.Module, state_dict: dict, path: Path) -> dict:
    """Resample a checkpoint's ``pos_embed`` to the model's token grid (timm's own filter), e.g. a
    224 px checkpoint run at ``--img-size 288``; other keys are left to the strict check."""
    have, want = state_dict.get("pos_embed"), getattr(model, "pos_embed", None)
    if have is None or want is None or have.shape == want.shape or have.ndim != 3 or have.shape[-1] != want.shape[-1]:
        return state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    fitted = checkpoint_filter_fn(dict(state_dict), model)
    log.warning("%s: pos_embed resampled from %s to %s tokens for the model's input size",
                path, have.shape[1], want.shape[1])
    return fitted


def _load_checkpoint_into(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load a checkpoint strictly into `model`, casting floating tensors to float32."""
    path = Path(checkpoint)
    state_dict = _fit_pos_embed(model, load_state_dict_file(path), path)
    _check_state_dict_matches(model, state_dict, path)
    check_finite_state_dict(state_dict, model.state_dict().keys(), path)
    state_dict = {
        key: value.float() if value.is_floating_point() else value
        for key, value in state_dict.items()
    }
    model.load_state_dict(state_dict, strict=True)


def _apply_data_overrides(model: torch.nn.Module, overrides: Mapping) -> None:
    """Set timm data-config fields (input_size, mean, std, crop_pct, interpolation) on the model."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    for key, value in overrides.items():
        if value is not None:
            cfg[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    model.pretrained_cfg = cfg


def load_model(
    name: str | None = None, checkpoint: str | os.PathLike | None = None, *,
    num_classes: int | None = None, img_size: int | None = None, mean=None, std=None,
    crop_pct: float | None = None, interpolation: str | None = None, random_weights_ok: bool = False,
    shapes_only: bool = False,
) -> torch.nn.Module:
    """Return a float32 eval-mode ViT: the bundled default or a timm name, optionally with a checkpoint.

    ``name`` None, ``"vit_digits"`` or another bundled model (``"vit_clutter"``,
    `simulator.bundled_models`) builds it from its JSON config and loads the
    bundled weights unless ``checkpoint`` is given. Any
    other name is created with ``timm.create_model(name, pretrained=False)``
    (no downloads); without a checkpoint its weights are random (a one-line
    warning unless ``random_weights_ok``). The keyword arguments are timm's:
    ``num_classes`` and ``img_size`` shape the model (head rows, patch grid),
    ``mean``/``std``/``crop_pct``/``interpolation`` its eval preprocessing.
    ``shapes_only`` builds the architecture without any weights (hardware cost
    from shapes: ``simulate cost``).
    """
    shape = {k: v for k, v in (("num_classes", num_classes), ("img_size", img_size)) if v is not None}
    if name is None or name in BUNDLED_MODELS:
        name = name or DEFAULT_MODEL
        config = default_model_config(name=name)
        model = build_vision_transformer({**config["model_kwargs"], **shape}, config["data_config"])
        if checkpoint is None and not shapes_only:
            if shape:
                raise InputError(f"{name}: --num-classes/--img-size change the model, so the bundled "
                                 "weights do not fit; pass --checkpoint")
            checkpoint = DEFAULT_MODEL_DIR / f"{name}.safetensors"
    elif isinstance(name, str):
        model = _create_timm_model(name, **shape)
        if checkpoint is None and not (random_weights_ok or shapes_only):
            log.warning("model %s: no --checkpoint, so its weights are random (accuracy is meaningless)", name)
    else:
        raise InputError(f"model name must be a string, got {type(name).__name__}")
    if img_size is not None:
        _apply_data_overrides(model, {"input_size": (model.patch_embed.proj.in_channels, img_size, img_size)})
    _apply_data_overrides(model, {"mean": mean, "std": std, "crop_pct": crop_pct, "interpolation": interpolation})
    if checkpoint is not None and not shapes_only:
        _load_checkpoint_into(model, checkpoint)
    return model.float().eval()


def model_input_config(model: torch.nn.Module) -> dict:
    """Return the model's eval preprocessing: input_size (C,H,W), mean, std, interpolation, crop_pct."""
    resolved = resolve_data_config({}, model=model)
    return {key: resolved[key] for key in _DATA_CONFIG_KEYS}
