"""Tests for reference.models: the bundled default, timm names, checkpoints and their errors."""

from __future__ import annotations

import re

import pytest
import safetensors.torch
import torch
from timm.models.vision_transformer import VisionTransformer

from reference.data import load_digits
from reference.models import (
    DEFAULT_MODEL,
    default_model_config,
    load_model,
    model_input_config,
)
from simulator.errors import InputError


@pytest.fixture(scope="module")
def default_model():
    """The bundled default model, loaded once per module."""
    return load_model()


@pytest.fixture(scope="module")
def deit_tiny():
    """A randomly initialised deit_tiny_patch16_224 (no download)."""
    return load_model("deit_tiny_patch16_224")


def small_vit(num_classes: int = 10) -> VisionTransformer:
    """A tiny VisionTransformer for checkpoint round trips (seeded, so reproducible)."""
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=num_classes,
        embed_dim=96, depth=6, num_heads=3,
    )


def test_default_model_is_float32_eval_vit(default_model):
    assert isinstance(default_model, VisionTransformer)
    assert not default_model.training
    assert all(p.dtype == torch.float32 for p in default_model.state_dict().values())
    assert load_model(DEFAULT_MODEL).state_dict().keys() == default_model.state_dict().keys()


def test_default_model_reaches_96_percent_on_digits_test(default_model):
    images, labels = load_digits("test")
    with torch.no_grad():
        predictions = default_model(torch.from_numpy(images)).argmax(1).numpy()
    accuracy = (predictions == labels).mean()
    assert accuracy >= 0.96
    # The accuracy recorded by the training script is the one we measure here.
    assert accuracy == pytest.approx(default_model_config()["test_accuracy"], abs=1e-6)


def test_default_model_input_config_comes_from_json(default_model):
    config = model_input_config(default_model)
    assert config == {
        "input_size": (1, 8, 8), "mean": (0.5,), "std": (0.5,),
        "interpolation": "bilinear", "crop_pct": 1.0,
    }


def test_deit_tiny_loads_by_name(deit_tiny):
    assert isinstance(deit_tiny, VisionTransformer)
    assert not deit_tiny.training
    assert deit_tiny.head.out_features == 1000
    config = model_input_config(deit_tiny)
    assert config["input_size"] == (3, 224, 224)
    assert config["interpolation"] == "bicubic"
    assert config["crop_pct"] == pytest.approx(0.9)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "model_state"])
def test_pth_checkpoint_round_trip(tmp_path, wrapper):
    source = small_vit()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # DataParallel prefix
    path = tmp_path / "ckpt.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    loaded = load_model(checkpoint=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_safetensors_checkpoint_round_trip(tmp_path):
    source = small_vit()
    path = tmp_path / "ckpt.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    loaded = load_model(DEFAULT_MODEL, checkpoint=path)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(InputError, match=r"unknown model 'deit_tiny_patch16_22' \(not a timm model name\); did you mean 'deit_tiny_patch16_224'"):
        load_model("deit_tiny_patch16_22")


def test_non_vit_timm_model_is_rejected():
    with pytest.raises(InputError, match=r"'resnet18' is a ResNet; only timm's VisionTransformer family"):
        load_model("resnet18")


def test_missing_checkpoint_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(InputError, match=re.escape(f"{path}: checkpoint file not found")):
        load_model(checkpoint=path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_checkpoint(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(small_vit().state_dict(), full)
    else:
        safetensors.torch.save_file(small_vit().state_dict(), str(full))
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=re.escape(f"{truncated}: cannot read checkpoint")) as caught:
        load_model(checkpoint=truncated)
    assert "\n" not in str(caught.value)


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(InputError, match=re.escape(f"{path}: not a state dict")):
        load_model(checkpoint=path)


def test_unsupported_checkpoint_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match=r"unsupported checkpoint type '.npz'"):
        load_model(checkpoint=path)


def test_wrong_head_size_names_the_head_shape(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(small_vit(num_classes=1000).state_dict(), path)
    with pytest.raises(InputError, match=re.escape(
        f"{path}: key 'head.weight' has shape (1000, 96), model expects (10, 96)"
    )):
        load_model(checkpoint=path)


def test_wrong_architecture_names_first_bad_key(tmp_path, deit_tiny):
    path = tmp_path / "deit.pth"
    torch.save(deit_tiny.state_dict(), path)
    with pytest.raises(InputError, match=re.escape(
        f"{path}: key 'cls_token' has shape (1, 1, 192), model expects (1, 1, 96)"
    )):
        load_model(checkpoint=path)


def test_missing_and_unexpected_keys(tmp_path):
    state = small_vit().state_dict()
    del state["blocks.0.attn.qkv.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(InputError, match=re.escape(f"{path}: missing key 'blocks.0.attn.qkv.weight'")):
        load_model(checkpoint=path)

    state = small_vit().state_dict()
    state["foo"] = torch.zeros(1)
    path = tmp_path / "extra.safetensors"
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(InputError, match=re.escape(f"{path}: unexpected key 'foo'")):
        load_model(checkpoint=path)
