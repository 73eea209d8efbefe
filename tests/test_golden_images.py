"""Refactors change no pixel: every family's engine draws, bit for bit, the image it drew when the goldens
were recorded (tests/golden_images.json), on tiny reference folders built by diffusers + transformers, the
built-in models and a random-weight model, in float32 and quantized, with true CFG and a tiled decode.

Each case records two digests: the model folder's files (so a changed fixture is told apart from a changed
engine) and the decoded float32 pixels. Float results depend on the machine's kernels (the BLAS build and
its thread count, Metal or CPU), so the goldens name the platform they were recorded on, BLAS runs on one
thread while drawing, and another platform skips the comparison (re-record there on an unchanged engine to
compare). When a change is meant to alter the pixels (a new numeric path), re-record on purpose and say
so in the commit:

    .venv/bin/python tests/test_golden_images.py --update
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

GOLDENS = Path(__file__).with_name("golden_images.json")
SIZE, STEPS, SEED = 32, 3, 5
PROMPT, NEGATIVE = "a red star over a blue sky", "blurry"


def _build(name: str, folder: Path) -> Path:
    from reference.flux1 import build_tiny_flux1
    from reference.pipelines import build_tiny_dev, build_tiny_klein
    from reference.qwen_image import build_tiny_qwen_image
    from reference.qwen_image21 import build_tiny_qwen_image21
    from reference.z_image import build_tiny_z_image
    from quantbench.core.random_model import write_random_model

    builders = {
        "klein": lambda f: build_tiny_klein(f, distilled=True),
        "klein-base": lambda f: build_tiny_klein(f, distilled=False, seed=7),
        "flux2-dev": build_tiny_dev,
        "flux1-schnell": lambda f: build_tiny_flux1(f, dev=False),
        "flux1-dev": lambda f: build_tiny_flux1(f, dev=True),
        "qwen-image": build_tiny_qwen_image,
        "z-image-turbo": lambda f: build_tiny_z_image(f, "turbo"),
        "z-image": lambda f: build_tiny_z_image(f, "base"),
        "qwen-image-2.1": build_tiny_qwen_image21,
        "qwen-image-2.1-turbo": lambda f: build_tiny_qwen_image21(f, seed=5, turbo=True),
        "random-tiny": lambda f: write_random_model(f, "tiny", seed=3),
    }
    builders[name](folder)
    return folder


@dataclass(frozen=True)
class Case:
    model: str  # a fixture name above, or a built-in model
    load: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)
    size: int = SIZE


TINY_LAYERS = {"text_encoder_layers": (1, 3, 5)}  # the tiny FLUX.2 folders stack hidden states 1, 3, 5
CASES = {
    "klein": Case("klein", TINY_LAYERS),
    "klein-q4": Case("klein", {**TINY_LAYERS, "quantize": 4}),
    "klein-q8-text-q4": Case("klein", {**TINY_LAYERS, "quantize": 8, "text_encoder_quantize": 4}),
    "klein-base-cfg": Case("klein-base", TINY_LAYERS, {"negative_prompt": NEGATIVE, "guidance": 4.0}),
    "klein-base-tiled": Case("klein-base", {**TINY_LAYERS, "memory": "lean"}, {"guidance": 3.0}, size=64),
    "flux2-dev": Case("flux2-dev", TINY_LAYERS, {"guidance": 3.5}),
    "flux2-dev-q6": Case("flux2-dev", {**TINY_LAYERS, "quantize": 6}),
    "flux1-schnell": Case("flux1-schnell"),
    "flux1-schnell-q4": Case("flux1-schnell", {"quantize": 4, "text_encoder_quantize": 8}),
    "flux1-dev": Case("flux1-dev", {}, {"guidance": 3.0}),
    "flux1-dev-true-cfg": Case("flux1-dev", {}, {"negative_prompt": NEGATIVE, "true_cfg": 2.5}),
    "qwen-image": Case("qwen-image", {}, {"guidance": 1.0}),
    "qwen-image-cfg": Case("qwen-image", {}, {"negative_prompt": NEGATIVE, "guidance": 4.0}),
    "qwen-image-q4": Case("qwen-image", {"quantize": 4}, {"guidance": 4.0}),
    "z-image-turbo": Case("z-image-turbo"),
    "z-image-turbo-q4": Case("z-image-turbo", {"quantize": 4}),
    "z-image-cfg": Case("z-image", {}, {"negative_prompt": NEGATIVE, "guidance": 4.0}),
    "qwen-image-2.1": Case("qwen-image-2.1"),
    "qwen-image-2.1-cfg": Case("qwen-image-2.1", {}, {"negative_prompt": NEGATIVE, "guidance": 4.0}),
    "qwen-image-2.1-turbo": Case("qwen-image-2.1-turbo"),
    "demo": Case("demo", {}, {"guidance": 4.0, "negative_prompt": NEGATIVE}, size=64),
    "demo-q4": Case("demo", {"quantize": 4}, {}, size=64),
    "demo-turbo": Case("demo-turbo", {}, {}, size=64),
    "random-tiny-q8": Case("random-tiny", {"quantize": 8}),
}
BUILTIN = ("demo", "demo-turbo")


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    # What draws the picture: not a model card (README.md), which is prose and changes with the docs.
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix != ".md"):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def draw(case: Case, folder: Path) -> str:
    """sha256 of the float32 pixels the engine decodes for `case`."""
    from quantbench.core.pipeline_base import MemoryOptions
    from quantbench.core.pipelines import load_pipeline

    options = dict(case.load)
    if options.get("memory") == "lean":
        options["memory"] = MemoryOptions.lean(vae_tile=32)
    model = load_pipeline(str(folder), allow_download=False, **options)
    result = model.generate(PROMPT, steps=STEPS, seed=SEED, width=case.size, height=case.size, preview=False,
                            **case.generate)
    pixels = np.ascontiguousarray(result.pixels, dtype=np.float32)
    return hashlib.sha256(pixels.tobytes()).hexdigest()[:16]


def platform() -> str:
    """What the float results depend on besides our code: OS, CPU, MLX's version and backend, the BLAS's kernels,
    and the cores (the tile kernel cuts a layer's output into blocks by them, and OpenBLAS may sum a row in
    another order in a block of another size)."""
    import platform as host

    import mlx.core as mx

    from quantbench.core.cpu_blas import blas_status

    blas = blas_status()  # the kernels, not how they were chosen (OPENBLAS_CORETYPE or OpenBLAS itself)
    return f"{sys.platform}-{host.machine()} mlx {mx.__version__} {mx.default_device()} {blas.blas} {blas.core}".rstrip() \
        + f", {os.cpu_count()} cores"


@contextmanager
def single_threaded_blas():
    """OpenBLAS splits a matmul's sums by thread count, so the last bits depend on it: draw on one thread."""
    from quantbench.core.cpu_blas import blas_status

    if blas_status().blas != "openblas":
        yield
        return
    library = ctypes.CDLL("libopenblas.so.0")
    threads = library.openblas_get_num_threads()
    library.openblas_set_num_threads(1)
    try:
        yield
    finally:
        library.openblas_set_num_threads(threads)


def record(root: Path) -> dict:
    """Every case's folder and image digests, with the fixtures built under `root`."""
    from quantbench.core.builtin import builtin_model_path

    folders: dict[str, Path] = {}
    out = {"platform": platform(), "cases": {}}
    with single_threaded_blas():
        for name, case in CASES.items():
            if case.model not in folders:
                folders[case.model] = (builtin_model_path(case.model) if case.model in BUILTIN
                                       else _build(case.model, root / case.model))
            out["cases"][name] = {"folder": folder_digest(folders[case.model]),
                                  "image": draw(case, folders[case.model])}
    return out


@pytest.fixture(scope="module")
def goldens():
    goldens = json.loads(GOLDENS.read_text())
    if goldens["platform"] != platform():
        pytest.skip(f"goldens recorded on {goldens['platform']}, this is {platform()}")
    return goldens["cases"]


@pytest.fixture(scope="module")
def recorded(goldens, tmp_path_factory):
    pytest.importorskip("diffusers")
    return record(tmp_path_factory.mktemp("golden"))["cases"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_image_is_bitwise_the_recorded_one(goldens, recorded, name):
    expected = goldens[name]
    got = recorded[name]
    assert got["folder"] == expected["folder"], (
        f"{name}: the model folder itself changed (a fixture builder or a built-in model), so the image cannot "
        "be compared; re-record the goldens on an unchanged engine")
    assert got["image"] == expected["image"], f"{name}: the engine draws a different image than when recorded"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: {sys.argv[0]} --update   (re-records {GOLDENS.name})")
    import tempfile

    import quantbench.core  # noqa: F401  (loads the fast BLAS before mlx)

    with tempfile.TemporaryDirectory() as scratch:
        GOLDENS.write_text(json.dumps(record(Path(scratch)), indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDENS}")
