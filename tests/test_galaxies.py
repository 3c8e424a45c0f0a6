"""The papers' findings on a real pretrained model: galaxygrad's HSC 32x32 score network (dgjax[galaxies]).

One cheap test per claim (the model loaded once per module, N = 8 or fewer, Heun with 16-24 steps on the
process's default grid, one compiled program per test); the rest is marked slow."""

import importlib.metadata

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

STEPS = 16
TRACK_STEPS = 24  # tracked vs re-encoded: 16 steps give r ~ 0.94 at N = 4


@pytest.fixture(scope="module")
def hsc32():
    return dg.load_model("galaxies-hsc32")


def test_tracked_logp_matches_reencoding(hsc32):
    m = hsc32
    x_T = m.prior_sample(jax.random.key(0), 8)

    @jax.jit  # sample and re-encode in one compiled program
    def run(x_T):
        out = dg.sample(m.score, m.process, x_T, key=jax.random.key(1), track_logp=True, solver=dfx.Heun(),
                        steps=TRACK_STEPS)
        return out, dg.log_likelihood(m.score, m.process, out.x, key=jax.random.key(2), solver=dfx.Heun(),
                                      steps=TRACK_STEPS)

    out, enc = run(x_T)
    r = np.corrcoef(np.asarray(out.logp), np.asarray(enc.logp))[0, 1]
    assert r >= 0.99, (r, out.logp, enc.logp)
    # log p of the flux: the change of variables adds sum log|dy/dx| = sum -log(0.1 (x + 1))
    flux = m.to_flux(out.x)
    ref = out.logp + jnp.sum(-jnp.log(0.1 * (flux + 1.0)).reshape(8, -1), axis=1)
    np.testing.assert_allclose(m.data_log_prob(out.logp, out.x), ref, rtol=1e-5)


def test_density_guidance_monotone_in_q(hsc32):
    m = hsc32
    x_T = m.prior_sample(jax.random.key(3), 4)

    @jax.jit  # one compilation for every q (q traced, per sample)
    def mean_logp(q):
        out = dg.sample(m.score, m.process, x_T, sampler=dg.DensityGuidance(q=jnp.full((4,), q)),
                        key=jax.random.key(4), track_logp=True, solver=dfx.Heun(), steps=STEPS)
        return jnp.mean(out.logp)

    means = [float(mean_logp(q)) for q in (0.2, 0.5, 0.8)]
    assert means[0] < means[1] < means[2], means


@pytest.mark.slow
def test_high_density_above_pfode(hsc32):
    m = hsc32
    x_T = m.prior_sample(jax.random.key(3), 4)
    kw = dict(key=jax.random.key(4), track_logp=True, solver=dfx.Heun(), steps=STEPS)
    pf = dg.sample(m.score, m.process, x_T, **kw)
    hd = dg.sample(m.score, m.process, x_T, sampler=dg.HighDensity(2.0), **kw)
    assert float(jnp.mean(hd.logp)) > float(jnp.mean(pf.logp)), (hd.logp, pf.logp)


def test_galaxygrad_missing_or_other_version(monkeypatch):
    real = importlib.metadata.version

    def fake(v):
        def version(name):
            if name != "galaxygrad":
                return real(name)
            if v is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return v
        return version

    monkeypatch.setattr(importlib.metadata, "version", fake("0.2.0"))
    with pytest.raises(dg.ModelError, match=r"galaxygrad==0\.1\.5.*0\.2\.0.*dgjax\[galaxies\]"):
        dg.load_model("galaxies-hsc64")
    monkeypatch.setattr(importlib.metadata, "version", fake(None))
    with pytest.raises(dg.ModelError, match=r"not installed.*dgjax\[galaxies\]"):
        dg.load_model("galaxies-ztf32")
    with pytest.raises(ValueError, match="unknown galaxy model"):
        dg.load_model("galaxies-hsc128")


@pytest.mark.slow
def test_cli_on_a_galaxy_model(tmp_path, capsys):
    from PIL import Image

    from dgjax.cli import main

    out = tmp_path / "g.png"
    assert main(["sample", "--model", "galaxies-hsc32", "--num", "2", "--q", "0.3", "0.7", "--steps", "12",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "galaxy model" in text and "asinh" in text
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 64 and img.std() > 0  # two rows of 32x32 images, not blank
    assert main(["likelihood", "--model", "galaxies-hsc32", "--num", "2", "--rtol", "1e-2", "--no-progress"]) == 0
    assert "flux x" in capsys.readouterr().out
    assert main(["align", "--model", "galaxies-hsc32", "--num", "2", "--batch-size", "2", "--steps", "8",
                 "--t-end", "1.0", "--no-progress"]) == 0
    assert "aligned fraction" in capsys.readouterr().out


def test_asinh_display_and_clip_fraction():
    """The 8-bit rendering of galaxy images (grids, PNG sizes in scripts/detail_png.py): flux x = e^{0.1 y} - 1,
    asinh(x / 0.05) / asinh(20) -> 0..255; pixels outside flux [0, 1] saturate and are counted as clipped."""
    import sys
    from pathlib import Path

    from dgjax.models.galaxies import AsinhDisplay

    flux = np.array([-0.2, 0.0, 0.05, 0.5, 0.99, 3.0])
    y = 10.0 * np.log1p(flux)[None, :, None, None]  # (1, 6, 1, 1) in the network space
    ref = np.round(np.clip(np.arcsinh(np.clip(flux, 0, None) / 0.05) / np.arcsinh(20.0), 0, 1) * 255)
    np.testing.assert_array_equal(AsinhDisplay().to_uint8(y).ravel(), ref.astype(np.uint8))
    assert ref[2] == 61 and ref[5] == 255  # asinh(1) / asinh(20) = 0.239 of white at the softening flux
    np.testing.assert_array_equal(AsinhDisplay().clipped(y).ravel(), [True, False, False, False, False, True])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import _common

    class Stub:  # a galaxy model as the scripts see it: no data range, the asinh display
        data_range = None
        dataset = type("D", (), {"transform": AsinhDisplay()})()

    assert _common.clip_fraction(Stub(), y) == 2 / 6
    Stub.data_range = 1.0  # digits / patches: pixels beyond [-1, 1]
    assert _common.clip_fraction(Stub(), np.array([-1.5, 0.0, 0.9, 2.0])) == 0.5



def test_high_density_default_switch_times_follow_the_log_snr():
    """scripts/high_density.py's default switch times: the same fractions of the log-SNR range on every process,
    so t = 0.1 ... 0.9 on VP (the historical defaults) and, on galaxygrad's process, the closed-form
    lambda_t = -log(e^t - 1) at those fractions of [lambda(1e-3), lambda(10)]."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import high_density

    assert high_density.default_switch_times(dg.VP()) == [0.1, 0.3, 0.5, 0.7, 0.9]
    ts = np.array(high_density.default_switch_times(dg.VPSDE(1.0, 1.0, 10.0)))
    lam = lambda t: -np.log(np.expm1(t))  # noqa: E731
    u = (lam(ts) - lam(1e-3)) / (lam(10.0) - lam(1e-3))
    np.testing.assert_allclose(u, [0.1, 0.3, 0.5, 0.7, 0.9], atol=2e-3)  # 3 significant digits in t
