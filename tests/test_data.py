"""Data sets that ship inside packages: transforms round-trip with the documented range, splits are clean,
batches are pure functions of (seed, step), and bad input fails clearly."""

import math
import os

import numpy as np
import pytest

from dgjax import data as D


@pytest.mark.parametrize("name", ["digits", "lfw", "patches"])
def test_image_transform_round_trips_with_documented_range(name):
    ds = D.load_dataset(name)
    y = ds.raw("train")[:200] if ds.finite else ds.data_batch(0, 0, 200)
    levels = ds.transform.levels
    assert y.dtype == np.uint8 and y.min() >= 0 and y.max() <= levels - 1
    rng = np.random.default_rng(1)
    x = ds.transform.to_model(y, rng)
    assert x.dtype == np.float32 and x.shape == y.shape
    assert x.min() >= -1.0 and x.max() < 1.0                       # x = 2 (y + u) / K - 1 in [-1, 1)
    np.testing.assert_array_equal(ds.transform.to_data(x), y)      # data -> model space -> data
    # the extreme levels with the extreme noise still round-trip
    edge = np.array([0, levels - 1], dtype=np.uint8)
    for u in (D.DELTA, 1 - D.DELTA):
        xe = (2.0 * (edge + u) / levels - 1.0).astype(np.float32)
        np.testing.assert_array_equal(ds.transform.to_data(xe), edge)
    assert ds.offset_bits == pytest.approx(math.log2(levels / 2))
    # model samples outside [-1, 1) are clipped to valid levels
    assert ds.transform.to_data(np.array([-3.0, 5.0])).tolist() == [0, levels - 1]


def test_documented_shapes_levels_and_offsets():
    digits = D.load_dataset("digits")
    assert digits.shape == (8, 8, 1) and digits.transform.levels == 17
    assert len(digits.raw("train")) == 1500 and len(digits.raw("test")) == 297
    assert digits.offset_bits == pytest.approx(math.log2(8.5))
    lfw = D.load_dataset("lfw")
    assert lfw.shape == (24, 24, 1) and lfw.offset_bits == 7.0
    assert len(lfw.raw("train")) == 80 and len(lfw.raw("test")) == 20
    assert D.load_dataset("patches", patch_size=32).shape == (32, 32, 3)


@pytest.mark.parametrize("name", D.TOY_SETS)
def test_toy_sets_identity_transform(name):
    ds = D.load_dataset(name)
    x = ds.train_batch(0, 0, 500)
    assert x.shape == (500, 2) and x.dtype == np.float32 and np.all(np.isfinite(x))
    assert np.abs(x).max() < 3.0 and ds.offset_bits == 0.0
    np.testing.assert_array_equal(ds.transform.to_data(ds.transform.to_model(x)), x)


def test_patch_split_is_by_source_image(monkeypatch):
    assert not set(D.PATCH_TRAIN_IMAGES) & set(D.PATCH_TEST_IMAGES)
    # every image is one that ships inside the scikit-image wheel (nothing fetched)
    import skimage.data

    for name in D.PATCH_TRAIN_IMAGES + D.PATCH_TEST_IMAGES:
        assert os.path.exists(os.path.join(skimage.data.data_dir, D._SKIMAGE_FILES[name]))
    used = []
    real = D.bundled_image
    monkeypatch.setattr(D, "bundled_image", lambda name: (used.append(name), real(name))[1])
    ds = D.load_dataset("patches")
    ds.train_batch(0, 0, 64)
    assert set(used) == set(D.PATCH_TRAIN_IMAGES)
    used.clear()
    ds.split("test", 64)
    assert set(used) == set(D.PATCH_TEST_IMAGES)
    # and pixel-level: no test patch occurs in a training image (checked on a few patches, exact match)
    test = ds.transform.to_data(ds.split("test", 4))
    for p in test:
        for name in D.PATCH_TRAIN_IMAGES:
            img = real(name)
            hits = np.argwhere(np.all(img[:-15, :-15] == p[0, 0], axis=-1))
            for r, c in hits[:2000]:
                assert not np.array_equal(img[r:r + 16, c:c + 16], p)


def test_batches_are_pure_functions_of_seed_and_step():
    for name in ("digits", "patches", "moons"):
        ds = D.load_dataset(name)
        a, b = ds.train_batch(3, 7, 16), ds.train_batch(3, 7, 16)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, ds.train_batch(3, 8, 16))
        assert not np.array_equal(a, ds.train_batch(4, 7, 16))


def test_finite_sets_walk_through_epochs():
    ds = D.load_dataset("lfw")  # 80 training faces: 5 steps of 16 cover each exactly once
    seen = np.concatenate([ds.data_batch(0, k, 16) for k in range(5)])
    train = ds.raw("train")
    assert sorted(map(bytes, seen)) == sorted(map(bytes, train))


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown name 'mnist'.*nothing is downloaded"):
        D.load_dataset("mnist")
    with pytest.raises(ValueError, match="split: unknown 'val'"):
        D.load_dataset("digits").split("val")
    with pytest.raises(ValueError, match="has 20 examples"):
        D.load_dataset("lfw").split("test", 50)


def test_image_grid_writes_png_and_refuses_bad_paths(tmp_path):
    from PIL import Image

    ds = D.load_dataset("digits")
    x = ds.split("test", 6)
    path = tmp_path / "g.png"
    D.save_image_grid(path, x.reshape(2, 3, 8, 8, 1), ds.transform, scale=2)
    img = Image.open(path)
    img.verify()
    assert Image.open(path).size == (2 * (3 * 9 + 1), 2 * (2 * 9 + 1))
    with pytest.raises(ValueError, match="does not exist"):
        D.save_image_grid(tmp_path / "missing" / "g.png", x, ds.transform)
    with pytest.raises(ValueError, match="does not exist"):
        D.save_image_grid(tmp_path / "g.png" / "inside-a-file.png", x, ds.transform)
    # an unwritable place: a read-only directory, or /proc where even root cannot create files
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    target = ro if not os.access(ro, os.W_OK) else "/proc"
    try:
        with pytest.raises(ValueError, match="not writable|could not write"):
            D.save_image_grid(os.path.join(target, "g.png"), x, ds.transform)
        assert not [f for f in os.listdir(target) if "g.png" in f]   # no partial or temporary file left
    finally:
        os.chmod(ro, 0o700)


def test_labelled_grid_is_the_plain_grid_plus_a_label_strip(tmp_path):
    """save_labelled_grid: the image part is exactly save_image_grid's (upscaled by nearest neighbour); each
    row's label is drawn beside that row."""
    from PIL import Image

    rows = np.random.default_rng(0).uniform(-1, 1, (3, 4, 8, 8, 1)).astype(np.float32)
    tr = D.Dequantize(17)
    D.save_image_grid(tmp_path / "plain.png", rows, tr, scale=8)
    D.save_labelled_grid(tmp_path / "lab.png", rows, tr, ["q=0.1", "q=0.5  mean log p 12.3", "q=0.9  infeasible"])
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB"))
    lab = np.asarray(Image.open(tmp_path / "lab.png").convert("RGB"))
    assert D.auto_scale(8) == 8 and plain.shape[0] == 3 * 9 * 8 + 8
    ph, pw = plain.shape[:2]
    assert lab.shape[0] == ph and lab.shape[1] > pw
    np.testing.assert_array_equal(lab[:, -pw:], plain)            # the images, pixel for pixel
    strip = lab[:, :-pw].min(axis=-1)
    for r in range(3):                                            # text (dark pixels) beside every row
        band = strip[8 + r * 72: 8 + r * 72 + 64]
        assert (band < 128).any(), r
    assert (strip[:8] == 255).all()                               # nothing above the first row
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary file left


def test_labelled_grid_rejects_bad_arguments(tmp_path):
    rows = np.zeros((2, 3, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="labels: expected one per row"):
        D.save_labelled_grid(tmp_path / "x.png", rows, D.Dequantize(17), ["a"])
    with pytest.raises(ValueError, match="rows: expected shape"):
        D.save_labelled_grid(tmp_path / "x.png", rows[0], D.Dequantize(17), ["a", "b"])
    with pytest.raises(ValueError, match="does not exist"):
        D.save_labelled_grid(tmp_path / "no" / "x.png", rows, D.Dequantize(17), ["a", "b"])
