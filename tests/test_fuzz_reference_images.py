"""Damaged reference images: hypothesis flips, overwrites, cuts and inserts bytes of a PNG, a JPEG, a WebP and a GIF
(headers, dimensions, chunk lengths, pixel data); checking the file and reading its pixels must then either give the
pixels of a checked size or refuse in one line (an InvalidRequest naming the file), never another exception.

The examples are derandomized (the same corpus on every run); raise FUZZ_EXAMPLES to search more, and set
FUZZ_RANDOM=1 to draw a new corpus."""

import io
import os

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quantbench.core.errors import InvalidRequest  # noqa: E402
from quantbench.core.reference_images import checked_reference, reference_pixels, reference_size  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


def _encoded(kind: str) -> bytes:
    y, x = np.mgrid[0:72, 0:96]
    pixels = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


PRISTINE = {kind: _encoded(kind) for kind in FORMATS}

edits = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 4000), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("cut"), st.integers(0, 4000)),
    st.tuples(st.just("insert"), st.integers(0, 4000), st.binary(min_size=1, max_size=16))), min_size=1, max_size=3)


def _damaged(data: bytes, steps) -> bytes:
    for kind, where, *rest in steps:
        where %= max(1, len(data))
        if kind == "set":
            data = data[:where] + rest[0] + data[where + len(rest[0]):]
        elif kind == "cut":
            data = data[:where]
        else:
            data = data[:where] + rest[0] + data[where:]
    return data


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(FORMATS), steps=edits)
def test_a_damaged_image_gives_checked_pixels_or_one_line(tmp_path, kind, steps):
    path = tmp_path / f"damaged.{kind.lower()}"
    path.write_bytes(_damaged(PRISTINE[kind], steps))
    try:
        checked_reference(path)
        pixels = reference_pixels(path)
    except InvalidRequest as refusal:
        assert "\n" not in str(refusal) and str(path) in str(refusal)
        return
    width, height = reference_size(path)
    assert pixels.shape == (1, height, width, 3) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and -1.0 <= pixels.min() and pixels.max() <= 1.0


def test_every_pristine_format_reads(tmp_path):
    for kind, data in PRISTINE.items():
        path = tmp_path / f"pristine.{kind.lower()}"
        path.write_bytes(data)
        assert reference_pixels(checked_reference(path)).shape == (1, 64, 96, 3)
