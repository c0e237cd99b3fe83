"""The models shipped with the package and the built-in datasets they read (torch-free names).

========================  ===================================================  ===========
model (``--model``)       what it is                                           data
========================  ===================================================  ===========
``vit_digits`` (default)  6-block ViT, width 96, 17 tokens, 8x8 sklearn digits ``digits``
``vit_clutter``           6-block ViT, width 192 (DeiT-Tiny), 197 tokens,      ``clutter``
                          digits on 56x56 cluttered canvases
========================  ===================================================  ===========

Weights and JSON configs live in ``reference/default_model/<name>.{safetensors,json}``
(``scripts/train_default_model.py``, ``scripts/train_clutter_model.py``); the
datasets are generated offline (`reference.data`, `reference.cluttered_digits`).
``--data`` defaults to the model's own dataset.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "BUNDLED_MODELS", "BUILTIN_DATASETS", "BUNDLED_DIR", "default_data", "bundled_json_path"]

DEFAULT_MODEL = "vit_digits"
BUNDLED_MODELS = {"vit_digits": "digits", "vit_clutter": "clutter"}      # name -> its built-in dataset
BUILTIN_DATASETS = ("digits", "clutter")
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "reference" / "default_model"


def default_data(model: str | None) -> str:
    """The built-in dataset a bundled model reads when ``--data`` is not given ('digits' otherwise)."""
    return BUNDLED_MODELS.get(model or DEFAULT_MODEL, "digits")


def bundled_json_path(model: str | None) -> Path:
    return BUNDLED_DIR / f"{model or DEFAULT_MODEL}.json"
