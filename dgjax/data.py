"""Data sets that ship inside installed packages (nothing is ever downloaded), each with one transform.

Data sets (``dg.load_dataset(name)``; ``dg.DATASETS`` lists them):

==============  ============  ==========================================================================
name            shape         source and split
==============  ============  ==========================================================================
``digits``      (8, 8, 1)     scikit-learn's 1797 handwritten digits, 17 grey levels (0..16). A fixed
                              permutation (seed 0) puts 1500 in ``train`` and 297 in ``test``.
``lfw``         (24, 24, 1)   the first 100 images of scikit-image's ``lfw_subset`` (the faces; the other
                              100 are non-faces and are not used), stored as floats in [0, 1] and
                              quantised here to 8 bits, ``y = round(255 v)``; the 25x25 images are
                              cropped to their top-left 24x24 so that a UNet can halve them twice.
                              Faces 0-79 are ``train``, 80-99 ``test``.
``patches``     (16, 16, 3)   random square RGB patches (size set by ``patch_size``, default 16; 32 gives
                              the 32x32 set) cut from the photographs and textures bundled in the
                              scikit-image wheel (only files in ``skimage.data.data_dir``; the ones it
                              fetches with pooch are never used). Grey images are repeated over the three
                              channels. The split is by source image: ``train`` patches come only from
                              ``PATCH_TRAIN_IMAGES``, ``test`` patches only from ``PATCH_TEST_IMAGES``.
``moons``,      (2,)          2-D toy distributions, sampled afresh (continuous, no quantisation).
``rings``,
``gaussians8``,
``checkerboard``
==============  ============  ==========================================================================

The transform (docs/math.md section 4), one per data set:

* 8-bit and other quantised images with ``K`` levels (``K = 256``, or 17 for ``digits``): uniform
  dequantisation and scaling

      x = 2 (y + u) / K - 1,    u ~ U[delta, 1 - delta)^D,  delta = 1e-4,

  so x lies in [-1, 1). The inverse (``to_data``) is ``y = clip(floor((x + 1) K / 2), 0, K - 1)``: exact
  for every x that the forward map produces (the ``delta`` margin keeps float32 rounding from pushing a
  value into the next level), and the nearest level for any other x, e.g. a model's sample.
  The Jacobian of ``y + u -> x`` is ``(2/K)^D``, so ``bits/dim = -log p(x) / (D ln 2) + log2(K / 2)``
  (``Dataset.offset_bits``: 7 for 8-bit data, as in docs/math.md 4; log2(8.5) = 3.09 for digits). The ``delta``
  margin narrows the dequantisation noise by 2e-4, which changes this bound by under 3e-4 bits/dim.
* Toy 2-D sets: the identity (``offset_bits = 0``; their points already have scale ~1).

Everything random is a pure function of ``(seed, step)`` (``Dataset.train_batch``), so a training run
that is killed and resumed sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._io import atomic_write
from .errors import InvalidArgument
from .quantization import Quantization

DELTA = 1e-4
"""Margin of the dequantisation noise u ~ U[DELTA, 1 - DELTA) (see the module docstring)."""

PATCH_TRAIN_IMAGES = ("astronaut", "coffee", "rocket", "immunohistochemistry", "motorcycle_left", "camera",
                      "moon", "brick", "grass", "clock", "cell")
"""Source images of the ``patches`` training split (bundled files of ``skimage.data``)."""
PATCH_TEST_IMAGES = ("chelsea", "gravel", "coins", "page")
"""Source images of the ``patches`` test split: never trained on."""

_SKIMAGE_FILES = {  # name -> file in skimage.data.data_dir (all ship inside the scikit-image wheel)
    "astronaut": "astronaut.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "immunohistochemistry": "ihc.png", "motorcycle_left": "motorcycle_left.png", "camera": "camera.png",
    "moon": "moon.png", "brick": "brick.png", "grass": "grass.png", "clock": "clock_motion.png",
    "cell": "cell.png", "chelsea": "chelsea.png", "gravel": "gravel.png", "coins": "coins.png",
    "page": "page.png",
}

TOY_SETS = ("moons", "rings", "gaussians8", "checkerboard")
DATASETS = ("digits", "lfw", "patches") + TOY_SETS
SPLITS = ("train", "test")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A numpy generator that is a pure function of (seed, *stream)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(s) for s in stream]])


# ------------------------------------------------------------------------------------------------------
# the transform
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dequantize:
    """Uniform dequantisation of K-level integer data into [-1, 1): ``x = 2 (y + u) / K - 1``."""

    levels: int

    @property
    def quantization(self) -> Quantization:
        """The data's declared quantization: ``levels`` bins on [-1, 1)."""
        return Quantization(self.levels, -1.0, 1.0)

    @property
    def offset_bits(self) -> float:
        """log2(K / 2): bits/dim of y = -log p(x) / (D ln 2) + offset_bits (``Quantization.offset_bits``,
        docs/math.md 4)."""
        return self.quantization.offset_bits

    def to_model(self, y, rng: np.random.Generator | None) -> np.ndarray:
        """Integer levels y (any shape) -> float32 x in [-1, 1). ``rng=None`` uses u = 1/2 (bin centres)."""
        y = np.asarray(y, dtype=np.float64)
        if rng is None:
            u = 0.5
        else:
            u = rng.uniform(DELTA, 1.0 - DELTA, size=y.shape)
        return (2.0 * (y + u) / self.levels - 1.0).astype(np.float32)

    def to_data(self, x) -> np.ndarray:
        """Model-space x -> integer levels in [0, K-1] (uint8 when K <= 256): floor, clipped."""
        x = np.asarray(x, dtype=np.float64)
        y = np.clip(np.floor((x + 1.0) * self.levels / 2.0), 0, self.levels - 1)
        return y.astype(np.uint8 if self.levels <= 256 else np.int32)

    def to_uint8(self, x) -> np.ndarray:
        """Model-space x -> 8-bit pixels (levels rescaled to 0..255) for writing images."""
        y = self.to_data(x).astype(np.float64)
        return np.round(y * 255.0 / (self.levels - 1)).astype(np.uint8)


@dataclass(frozen=True)
class Identity:
    """The transform of continuous (toy) data: x = y."""

    offset_bits: float = 0.0
    quantization = None  # continuous data: no bins, bits/dim of the density itself

    def to_model(self, y, rng=None) -> np.ndarray:
        return np.asarray(y, dtype=np.float32)

    def to_data(self, x) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)


# ------------------------------------------------------------------------------------------------------
# data sets
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """A data set: ``shape`` (per sample, channels last), a ``transform``, and the two splits.

    ``train_batch(seed, step, n)`` is the model-space batch a training run uses at ``step`` (a pure
    function of its arguments: epochs are fixed permutations for finite sets, fresh draws otherwise).
    ``split(name, n, seed)`` gives n model-space examples of a split (dequantised with a fixed rng).
    ``raw(name)`` gives the integer data of a finite split.
    """

    name: str
    shape: tuple
    transform: Dequantize | Identity
    _raw: Callable | None = field(default=None, repr=False)      # split -> integer array (N, *shape)
    _draw: Callable | None = field(default=None, repr=False)     # (rng, n, split) -> data-space array (n, *shape)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def offset_bits(self) -> float:
        return self.transform.offset_bits

    @property
    def quantization(self) -> Quantization | None:
        """The declared quantization of the data (None for continuous data)."""
        return getattr(self.transform, "quantization", None)

    @property
    def finite(self) -> bool:
        return self._raw is not None

    def raw(self, split: str = "train") -> np.ndarray:
        _check_split(split)
        if self._raw is None:
            raise InvalidArgument(f"data set {self.name!r} is sampled afresh and has no fixed {split!r} array; "
                                  f"use .split({split!r}, n) to draw n examples")
        return self._raw(split)

    def __len__(self) -> int:
        return len(self.raw("train")) if self.finite else 0

    def _fresh(self, rng: np.random.Generator, n: int, split: str) -> np.ndarray:
        """n fresh data-space examples of a set sampled afresh (one without ``_raw``)."""
        assert self._draw is not None, f"data set {self.name!r} has neither _raw nor _draw"
        return self._draw(rng, n, split)

    def data_batch(self, seed: int, step: int, n: int) -> np.ndarray:
        """The data-space (integer, for images) training batch at ``step``."""
        if self._raw is not None:
            data = self.raw("train")
            total = len(data)
            start = step * n
            idx = np.empty(n, dtype=np.int64)
            filled = 0
            while filled < n:  # walk through fixed per-epoch permutations
                epoch, pos = divmod(start + filled, total)
                take = min(n - filled, total - pos)
                idx[filled:filled + take] = _rng(seed, 1, epoch).permutation(total)[pos:pos + take]
                filled += take
            return data[idx]
        return self._fresh(_rng(seed, 2, step), n, "train")

    def train_batch(self, seed: int, step: int, n: int) -> np.ndarray:
        """Model-space training batch (N, *shape) float32 at ``step``: a pure function of (seed, step, n)."""
        return self.transform.to_model(self.data_batch(seed, step, n), _rng(seed, 3, step))

    def data_split(self, split: str = "test", n: int | None = None, seed: int = 0) -> np.ndarray:
        """n data-space examples (default: all of a finite split, else 512) of ``split``: the integer levels of
        quantized data (what ``dg.evaluate_likelihood`` dequantizes with ``.quantization``), the points of a
        continuous set. The same examples as ``split(split, n, seed)`` before its dequantization."""
        _check_split(split)
        if self._raw is not None:
            data = self.raw(split)
            if n is not None and n > len(data):
                raise InvalidArgument(f"n: the {split!r} split of {self.name!r} has {len(data)} examples; got n={n}")
            return data if n is None else data[:n]
        return self._fresh(_rng(seed, 4, SPLITS.index(split)), 512 if n is None else n, split)

    def split(self, split: str = "test", n: int | None = None, seed: int = 0) -> np.ndarray:
        """n model-space examples (default: all of a finite split, else 512) of ``split``."""
        _check_split(split)
        rng = _rng(seed, 4, SPLITS.index(split))
        if self._raw is not None:
            data = self.raw(split)
            if n is not None:
                if n > len(data):
                    raise InvalidArgument(f"n: the {split!r} split of {self.name!r} has {len(data)} examples; "
                                          f"got n={n}")
                data = data[:n]
        else:
            data = self._fresh(rng, 512 if n is None else n, split)
        return self.transform.to_model(data, rng)


def _check_split(split):
    if split not in SPLITS:
        raise InvalidArgument(f"split: unknown {split!r}; choose one of {SPLITS}")


@functools.cache
def _digits_raw(split):
    from sklearn.datasets import load_digits

    # (1797, 8, 8, 1), levels 0..16 (sklearn types the Bunch return as a union with the return_X_y tuple)
    y = load_digits().images.astype(np.uint8)[..., None]  # pyright: ignore[reportAttributeAccessIssue]
    perm = np.random.default_rng(0).permutation(len(y))
    return y[perm[:1500]] if split == "train" else y[perm[1500:]]


@functools.cache
def _lfw_raw(split):
    from skimage.data import lfw_subset

    faces = np.round(lfw_subset()[:100] * 255.0).astype(np.uint8)[:, :24, :24, None]
    return faces[:80] if split == "train" else faces[80:]


_IMAGE_CACHE: dict = {}


def bundled_image(name: str) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) from the files bundled with scikit-image (never fetched)."""
    if name not in _IMAGE_CACHE:
        import skimage.data
        import skimage.io

        path = os.path.join(skimage.data.data_dir, _SKIMAGE_FILES[name])
        if not os.path.exists(path):
            raise FileNotFoundError(f"scikit-image's bundled image {path} is missing (it ships inside the "
                                    f"scikit-image wheel; reinstall scikit-image)")
        img = np.asarray(skimage.io.imread(path))
        if img.dtype != np.uint8:
            img = img.astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        _IMAGE_CACHE[name] = np.ascontiguousarray(img[..., :3])
    return _IMAGE_CACHE[name]


def patch_sources(split: str) -> tuple:
    _check_split(split)
    return PATCH_TRAIN_IMAGES if split == "train" else PATCH_TEST_IMAGES


def _draw_patches(size: int):
    def draw(rng: np.random.Generator, n: int, split: str) -> np.ndarray:
        names = patch_sources(split)
        imgs = [bundled_image(k) for k in names]
        # choose a source with probability proportional to its number of patch positions
        counts = np.array([(im.shape[0] - size + 1) * (im.shape[1] - size + 1) for im in imgs], dtype=np.float64)
        which = rng.choice(len(imgs), size=n, p=counts / counts.sum())
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        rows = rng.random(n)
        cols = rng.random(n)
        flips = rng.random(n) < 0.5
        for i in range(n):
            im = imgs[which[i]]
            r = int(rows[i] * (im.shape[0] - size + 1))
            c = int(cols[i] * (im.shape[1] - size + 1))
            p = im[r:r + size, c:c + size]
            out[i] = p[:, ::-1] if flips[i] else p
        return out

    return draw


def _draw_toy(name: str):
    def draw(rng: np.random.Generator, n: int, split: str) -> np.ndarray:
        if name == "moons":
            t = rng.uniform(0, np.pi, n)
            upper = rng.random(n) < 0.5
            x = np.where(upper, np.cos(t), 1 - np.cos(t))
            y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
            pts = np.stack([x - 0.5, y - 0.25], -1) + 0.08 * rng.standard_normal((n, 2))
        elif name == "rings":
            r = rng.choice([0.5, 1.0, 1.5], n)
            a = rng.uniform(0, 2 * np.pi, n)
            pts = np.stack([r * np.cos(a), r * np.sin(a)], -1) + 0.06 * rng.standard_normal((n, 2))
        elif name == "gaussians8":
            k = rng.integers(0, 8, n)
            a = 2 * np.pi * k / 8
            pts = 1.5 * np.stack([np.cos(a), np.sin(a)], -1) + 0.1 * rng.standard_normal((n, 2))
        else:  # checkerboard on [-2, 2]^2: the cells with floor(x) + floor(y) even, scaled by 1/2
            x = rng.uniform(-2, 2, n)
            col = np.floor(x)
            row = 2 * rng.integers(0, 2, n) + (col % 2) - 2
            y = row + rng.uniform(0, 1, n)
            pts = np.stack([x, y], -1) / 2.0
        return pts.astype(np.float32)

    return draw


def load_dataset(name: str, *, patch_size: int = 16) -> Dataset:
    """The data set ``name`` (one of ``DATASETS``); ``patch_size`` applies to ``patches`` only."""
    if name == "digits":
        return Dataset("digits", (8, 8, 1), Dequantize(17), _raw=_digits_raw)
    if name == "lfw":
        return Dataset("lfw", (24, 24, 1), Dequantize(256), _raw=_lfw_raw)
    if name == "patches":
        if not (isinstance(patch_size, int) and 4 <= patch_size <= 128):
            raise InvalidArgument(f"patch_size: must be an int in [4, 128]; got {patch_size!r}")
        return Dataset("patches", (patch_size, patch_size, 3), Dequantize(256), _draw=_draw_patches(patch_size))
    if name in TOY_SETS:
        return Dataset(name, (2,), Identity(), _draw=_draw_toy(name))
    raise InvalidArgument(f"data set: unknown name {name!r}; choose one of {DATASETS} (all ship inside installed "
                          f"packages; nothing is downloaded)")


def _image_grid_pixels(x, transform, nrow: int | None, scale: int, pad: int) -> np.ndarray:
    """The uint8 RGB pixels of ``save_image_grid``'s PNG (rows x columns of images, ``pad`` white pixels
    between them, every pixel repeated ``scale`` times in each direction)."""
    x = np.asarray(x)
    if x.ndim == 5:
        nrow = x.shape[0]
        x = x.reshape((-1,) + x.shape[2:])
    if x.ndim != 4:
        raise InvalidArgument(f"images must have shape (N, H, W, C) or (rows, cols, H, W, C); got {x.shape}")
    n, h, w, c = map(int, x.shape)
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    img = transform.to_uint8(x) if hasattr(transform, "to_uint8") else np.clip((x + 1) * 127.5, 0, 255).astype(np.uint8)
    if c == 1:
        img = np.repeat(img, 3, axis=-1)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img[i]
    return np.kron(grid, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else grid


def _check_output_dir(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidArgument(f"output path {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise InvalidArgument(f"output path {path!r}: directory {directory!r} is not writable")


def save_image_grid(path, x, transform, nrow: int | None = None, *, scale: int = 4, pad: int = 1) -> None:
    """Write model-space images x (N, H, W, C) (or (R, C_, H, W, C) rows x columns) as one PNG grid.

    The file is written to a temporary name beside ``path`` and renamed, so a failed write leaves none.
    """
    from PIL import Image

    grid = _image_grid_pixels(x, transform, nrow, scale, pad)
    path = os.fspath(path)
    _check_output_dir(path)
    atomic_write(path, lambda fh: Image.fromarray(grid).save(fh, format="PNG"), ValueError)


# about 64 pixels per image side: 8x8 digits x8, 16x16 patches x4, 24x24 faces x3
TARGET_SIDE = 64


def auto_scale(height: int) -> int:
    """Nearest-neighbour upscaling factor that makes an image of ``height`` pixels about 64 pixels tall."""
    return max(1, int(math.ceil(TARGET_SIDE / max(int(height), 1))))


def save_labelled_grid(path, rows, transform, labels, *, scale: int | None = None, pad: int = 1,
                       title: str | None = None) -> None:
    """Write ``rows`` (R, C, H, W, channels), model-space images, as one PNG readable at a glance: the pixels of
    ``save_image_grid`` (each image upscaled ``scale`` times, default ``auto_scale(H)``), ``labels[r]`` written
    left of row r (PIL's built-in bitmap font: no font file) and an optional ``title`` above. Written atomically.
    Raises ValueError naming the argument on bad shapes, label counts or output paths."""
    from PIL import Image, ImageDraw, ImageFont

    rows = np.asarray(rows)
    if rows.ndim != 5:
        raise InvalidArgument(f"rows: expected shape (rows, cols, H, W, C); got {rows.shape}")
    labels = [str(s) for s in labels]
    if len(labels) != rows.shape[0]:
        raise InvalidArgument(f"labels: expected one per row ({rows.shape[0]}); got {len(labels)}")
    scale = auto_scale(rows.shape[2]) if scale is None else int(scale)
    if scale < 1:
        raise InvalidArgument(f"scale: must be >= 1; got {scale}")
    grid = Image.fromarray(_image_grid_pixels(rows, transform, None, scale, pad))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = lambda s: int(probe.textbbox((0, 0), s, font=font)[2])  # noqa: E731
    text_h = int(probe.textbbox((0, 0), "Ag", font=font)[3])
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
    path = os.fspath(path)
    _check_output_dir(path)
    atomic_write(path, lambda fh: out.save(fh, format="PNG"), ValueError)
