"""Image grids readable at a glance: images scaled up by nearest-neighbour repetition, one text label per row.

``save_labelled_grid`` draws the grid with ``dg.data.save_image_grid`` (the data set's transform to 8-bit
pixels, padding, atomic write) and puts a white strip with each row's label (PIL's built-in bitmap font,
``ImageFont.load_default``: no font file, works offline) to the left of the rows.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from .data import save_image_grid

# about 64 pixels per image side: 8x8 digits x8, 16x16 patches x4, 24x24 faces x3
TARGET_SIDE = 64


def auto_scale(height: int) -> int:
    """Nearest-neighbour upscaling factor that makes an image of ``height`` pixels about 64 pixels tall."""
    return max(1, int(math.ceil(TARGET_SIDE / max(int(height), 1))))


def save_labelled_grid(path, rows, transform, labels, *, scale: int | None = None, pad: int = 1,
                       title: str | None = None) -> None:
    """Write ``rows`` (R, C, H, W, channels), model-space images, as one PNG: R rows of C images, each image
    upscaled ``scale`` times (default ``auto_scale(H)``), ``labels[r]`` written left of row r and an optional
    ``title`` above. Raises ValueError naming the argument on bad shapes, label counts or output paths."""
    from PIL import Image, ImageDraw, ImageFont

    rows = np.asarray(rows)
    if rows.ndim != 5:
        raise ValueError(f"rows: expected shape (rows, cols, H, W, C); got {rows.shape}")
    labels = [str(s) for s in labels]
    if len(labels) != rows.shape[0]:
        raise ValueError(f"labels: expected one per row ({rows.shape[0]}); got {len(labels)}")
    scale = auto_scale(rows.shape[2]) if scale is None else int(scale)
    if scale < 1:
        raise ValueError(f"scale: must be >= 1; got {scale}")
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "grid.png")
        save_image_grid(raw, rows, transform, scale=scale, pad=pad)
        with Image.open(raw) as im:
            grid = im.convert("RGB")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = lambda s: probe.textbbox((0, 0), s, font=font)[2]  # noqa: E731
    text_h = probe.textbbox((0, 0), "Ag", font=font)[3]
    left = max(width(s) for s in labels) + 12
    top = text_h + 10 if title else 0
    out = Image.new("RGB", (left + max(grid.width, width(title) + 8 if title else 0), top + grid.height), "white")
    out.paste(grid, (left, top))
    draw = ImageDraw.Draw(out)
    cell = (rows.shape[2] + pad) * scale
    for r, s in enumerate(labels):
        y = top + pad * scale + r * cell + (rows.shape[2] * scale - text_h) // 2
        draw.text((left - 6 - width(s), y), s, fill="black", font=font)
    if title:
        draw.text((left, 4), title, fill="black", font=font)
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ValueError(f"output path {os.fspath(path)!r}: directory {directory!r} does not exist or is not writable")
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(os.fspath(path))}.", suffix=".tmp")
    os.close(fd)
    try:
        out.save(tmp_path, format="PNG")
        os.replace(tmp_path, os.fspath(path))
    except OSError as e:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise ValueError(f"output path {os.fspath(path)!r}: could not write the image ({e})") from e
