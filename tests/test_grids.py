"""Labelled image grids (dgjax/grids.py): the image part is exactly dg.data.save_image_grid's, upscaled by
nearest neighbour; each row's label is drawn beside that row; bad arguments are clear errors."""

import numpy as np
import pytest
from PIL import Image

from dgjax.data import Dequantize, save_image_grid
from dgjax.grids import auto_scale, save_labelled_grid


def test_labelled_grid_is_the_plain_grid_plus_a_label_strip(tmp_path):
    rows = np.random.default_rng(0).uniform(-1, 1, (3, 4, 8, 8, 1)).astype(np.float32)
    tr = Dequantize(17)
    save_image_grid(tmp_path / "plain.png", rows, tr, scale=8)
    save_labelled_grid(tmp_path / "lab.png", rows, tr, ["q=0.1", "q=0.5  mean log p 12.3", "q=0.9  infeasible"])
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB"))
    lab = np.asarray(Image.open(tmp_path / "lab.png").convert("RGB"))
    assert auto_scale(8) == 8 and plain.shape[0] == 3 * 9 * 8 + 8
    ph, pw = plain.shape[:2]
    assert lab.shape[0] == ph and lab.shape[1] > pw
    np.testing.assert_array_equal(lab[:, -pw:], plain)            # the images, pixel for pixel
    strip = lab[:, :-pw].min(axis=-1)
    for r in range(3):                                            # text (dark pixels) beside every row
        band = strip[8 + r * 72: 8 + r * 72 + 64]
        assert (band < 128).any(), r
    assert (strip[:8] == 255).all()                               # nothing above the first row


def test_labelled_grid_rejects_bad_arguments(tmp_path):
    rows = np.zeros((2, 3, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="labels: expected one per row"):
        save_labelled_grid(tmp_path / "x.png", rows, Dequantize(17), ["a"])
    with pytest.raises(ValueError, match="rows: expected shape"):
        save_labelled_grid(tmp_path / "x.png", rows[0], Dequantize(17), ["a", "b"])
    with pytest.raises(ValueError, match="does not exist"):
        save_labelled_grid(tmp_path / "no" / "x.png", rows, Dequantize(17), ["a", "b"])
