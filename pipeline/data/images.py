"""Decoding the JPEG datasets (Waterbirds, CelebA): image files -> one (N, 3, R, R) uint8 array.

Each image is cropped to its largest centred square and resized (bicubic, antialiased) to
``resolution`` x ``resolution``; threads decode in parallel (PIL releases the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.download import DatasetFileError


def _decode_one(path: Path, resolution: int) -> np.ndarray:
    """One image file -> (3, R, R) uint8: largest centered square, then an antialiased resize."""
    with Image.open(path) as img:
        # draft() lets the JPEG decoder skip detail we would throw away (DCT scaling, >= 2x the target).
        img.draft("RGB", (2 * resolution, 2 * resolution))
        img = img.convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        # Crop first: resize(box=...) would let the filter read pixels outside the square.
        img = img.crop((left, top, left + side, top + side))
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_images(
    dataset: str, paths: Sequence[Path], resolution: int, layout: str, workers: int | None = None
) -> np.ndarray:
    """Decode image files into one (N, 3, R, R) uint8 array, threads in parallel (PIL frees the GIL).

    A missing or undecodable file raises DatasetFileError naming it.
    """
    if resolution < 8:
        raise ValueError(f"{dataset}: resolution must be >= 8 pixels; got {resolution}")
    out = np.empty((len(paths), 3, resolution, resolution), dtype=np.uint8)

    def work(i: int) -> None:
        path = paths[i]
        try:
            out[i] = _decode_one(path, resolution)
        except FileNotFoundError:
            raise DatasetFileError(
                dataset, path, "image file is missing", "a JPEG listed in the metadata", layout
            ) from None
        except OSError as err:  # PIL raises OSError subclasses for truncated/corrupt images
            raise DatasetFileError(dataset, path, f"cannot decode image ({err})", "a readable JPEG", layout) from None

    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        for _ in pool.map(work, range(len(paths))):
            pass
    return out


__all__ = ["decode_images"]
