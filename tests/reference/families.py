"""The tiny reference folders of every registered family, built with diffusers + transformers: the family
contract test (tests/test_family_contract.py) runs each one through the same checks.

A new family adds its builder here (one entry per variant worth checking: distilled and base, say), keyed by
its registry name; the contract test fails for a registered family that has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class TinyModel:
    build: Callable[[Path], object]  # writes a diffusers-layout folder (save_pretrained) into the given path
    load: dict = field(default_factory=dict)  # what the engine needs besides the folder (as the tests pass it)
    size: int = 32  # pixels: a multiple of 16 the tiny VAE decodes


def _klein(distilled: bool, seed: int = 0):
    from .pipelines import build_tiny_klein
    return lambda folder: build_tiny_klein(folder, distilled=distilled, seed=seed)


def _flux1(dev: bool):
    from .flux1 import build_tiny_flux1
    return lambda folder: build_tiny_flux1(folder, dev=dev)


def _flux2_dev(folder: Path):
    from .pipelines import build_tiny_dev
    return build_tiny_dev(folder)


def _qwen_image(folder: Path):
    from .qwen_image import build_tiny_qwen_image
    return build_tiny_qwen_image(folder)


def _z_image(variant: str):
    from .z_image import build_tiny_z_image
    return lambda folder: build_tiny_z_image(folder, variant)


def _qwen_image21(turbo: bool, seed: int = 0):
    from .qwen_image21 import build_tiny_qwen_image21
    return lambda folder: build_tiny_qwen_image21(folder, seed=seed, turbo=turbo)


STACKED = {"text_encoder_layers": (1, 3, 5)}  # the tiny FLUX.2 encoders have 6 layers (the real ones: 9, 18, 27)
TINY_MODELS: dict[str, dict[str, TinyModel]] = {
    "flux2": {"klein": TinyModel(_klein(True), STACKED), "klein-base": TinyModel(_klein(False, seed=7), STACKED),
              "dev": TinyModel(_flux2_dev, STACKED)},
    "flux1": {"schnell": TinyModel(_flux1(False)), "dev": TinyModel(_flux1(True))},
    "qwen_image": {"qwen-image": TinyModel(_qwen_image)},
    "z_image": {"turbo": TinyModel(_z_image("turbo")), "base": TinyModel(_z_image("base"))},
    "qwen_image21": {"base": TinyModel(_qwen_image21(False)), "turbo": TinyModel(_qwen_image21(True, seed=5))},
}
