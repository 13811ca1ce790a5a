"""``model.runtime.imageio`` and PIL's decompression-bomb guard: no global change at import,
the header check before decoding, and the explicit start-up call that raises PIL's limit."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from model.runtime import imageio
from model.runtime.imageio import ImageDecodeError, allow_decoding_up_to, decode_image

REPO = Path(__file__).resolve().parents[1]


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width x height`` (CRC patched): decoding it would fail."""
    data = bytearray(png(1, 1))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def pil_limit(monkeypatch) -> int:
    """PIL's default limit for this test, restored afterwards (``allow_decoding_up_to`` is process-wide)."""
    default = 1024 * 1024 * 1024 // 4 // 3
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", default)
    return default


@pytest.fixture
def no_decoding(monkeypatch) -> list:
    """Records every pixel decode (``ImageFile.load``); the tests assert none happened."""
    calls: list = []
    original = ImageFile.ImageFile.load

    def load(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_import_leaves_pil_limit_alone() -> None:
    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import model.runtime.imageio; "
            "print(before, Image.MAX_IMAGE_PIXELS)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split()
    assert before == after == str(1024 * 1024 * 1024 // 4 // 3)


def test_header_over_max_pixels_refused_before_decoding(pil_limit, no_decoding) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png_with_header_size(101, 100), max_pixels=100 * 100)
    assert info.value.code == "image_too_large" and "101x100" in str(info.value) and "10000" in str(info.value)
    assert no_decoding == []
    assert decode_image(png(100, 100), max_pixels=100 * 100).shape == (100, 100, 3)  # at the limit: decoded
    assert set(no_decoding) == {(100, 100)}  # the recorder does see decoding


def test_header_between_pil_limits_refused_by_own_check(pil_limit, no_decoding) -> None:
    """Over PIL's limit but under twice it: PIL only warns (silenced); our header check refuses."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png_with_header_size(10_000, 10_000))  # 100 M > 89.5 M, < 179 M
    assert info.value.code == "image_too_large" and f"{imageio.DEFAULT_MAX_PIXELS}" in str(info.value)
    assert no_decoding == []


def test_decompression_bomb_error_is_image_too_large(pil_limit, no_decoding) -> None:
    """Over twice PIL's limit ``Image.open`` raises DecompressionBombError: reported as image_too_large."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png_with_header_size(20_000, 20_000))
    assert info.value.code == "image_too_large"
    assert f"over the {imageio.DEFAULT_MAX_PIXELS} pixel limit" in str(info.value)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)
    # A max_pixels above PIL's limit without the start-up call: PIL's limit applies and is named.
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png_with_header_size(20_000, 20_000), max_pixels=500_000_000)
    assert info.value.code == "image_too_large" and f"over the {2 * pil_limit} pixel limit" in str(info.value)
    assert no_decoding == []


def test_allow_decoding_up_to_raises_pil_limit(pil_limit, no_decoding) -> None:
    assert allow_decoding_up_to(imageio.DEFAULT_MAX_PIXELS) == pil_limit  # below PIL's: unchanged
    assert Image.MAX_IMAGE_PIXELS == pil_limit
    assert allow_decoding_up_to(500_000_000) == 500_000_000
    assert Image.MAX_IMAGE_PIXELS == 500_000_000
    assert allow_decoding_up_to(1000) == 500_000_000  # never lowered
    # 400 M pixels now pass PIL's guard and reach our own header check, which refuses them
    # against max_pixels with the dimensions named; still nothing decoded.
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png_with_header_size(20_000, 20_000), max_pixels=300_000_000)
    assert info.value.code == "image_too_large" and "20000x20000" in str(info.value)
    assert info.value.__cause__ is None
    assert no_decoding == []
    with pytest.raises(ValueError):
        allow_decoding_up_to(0)


def test_allow_decoding_up_to_keeps_guard_off(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert allow_decoding_up_to(500_000_000) is None and Image.MAX_IMAGE_PIXELS is None
