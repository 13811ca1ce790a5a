"""Coverage-guided fuzzing of ``model.runtime.imageio.decode_image`` with atheris (libFuzzer).

Only ``ImageDecodeError`` may come out of ``decode_image``; any other exception is a
finding (libFuzzer writes the input as ``crash-*`` into the working directory / -artifact_prefix).
Seeded with small PNG/JPEG/BMP/TIFF encodings (plain, gray, RGBA, palette, 16-bit, CMYK).

    PYTHONPATH=/tmp/relidx:. .venv/bin/python benchmarks/fuzz_decode.py -max_total_time=120 \\
        -artifact_prefix=runs/reliability_fuzz_ runs/reliability_fuzz_corpus

atheris is not a project dependency: install it into a separate target, e.g.
``.venv/bin/python -m pip install --target /tmp/relidx atheris``.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["model", "PIL"]):  # PIL first imported here, so it is instrumented
    from PIL import BmpImagePlugin, Image, ImageOps, JpegImagePlugin, PngImagePlugin, TiffImagePlugin  # noqa: F401

    from model.runtime.imageio import ImageDecodeError, decode_image

MAX_PIXELS = 4_000_000  # keep single executions fast; the header check is what is under test


def seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    out: dict[str, bytes] = {}
    variants = {
        "rgb": rgb, "gray": rgb.convert("L"), "rgba": rgb.convert("RGBA"), "pal": rgb.convert("P"),
        "g16": Image.fromarray(rng.integers(0, 65536, (12, 16)).astype(np.uint16)),
        "cmyk": rgb.convert("CMYK"), "bw": rgb.convert("1"),
    }
    for fmt, modes in {"PNG": ("rgb", "gray", "rgba", "pal", "g16", "bw"), "JPEG": ("rgb", "gray", "cmyk"),
                       "BMP": ("rgb", "gray", "pal", "bw"), "TIFF": ("rgb", "gray", "rgba", "g16", "cmyk")}.items():
        for mode in modes:
            buf = io.BytesIO()
            try:
                variants[mode].save(buf, fmt)
            except OSError:
                continue
            out[f"{fmt.lower()}_{mode}"] = buf.getvalue()
    return out


def test_one_input(data: bytes) -> None:
    try:
        image = decode_image(data, MAX_PIXELS)
    except ImageDecodeError:
        return
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise AssertionError(f"decode_image returned {type(image)} {getattr(image, 'shape', None)}")


def main() -> None:
    argv = list(sys.argv)
    corpus = next((a for a in argv[1:] if not a.startswith("-")), None)
    if corpus is None:
        corpus = "runs/reliability_fuzz_corpus"
        argv.append(corpus)
    Path(corpus).mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (Path(corpus) / f"seed_{name}").write_bytes(data)
    if not any(a.startswith("-max_total_time") for a in argv):
        argv.append("-max_total_time=60")
    if not any(a.startswith("-rss_limit_mb") for a in argv):
        argv.append("-rss_limit_mb=4096")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.simplefilter("ignore")  # PIL warns on odd TIFF tags; only exceptions matter
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
