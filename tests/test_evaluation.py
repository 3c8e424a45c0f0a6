"""Data-set likelihood (dg.evaluate_likelihood, docs/math.md 4): the dequantization protocols against the exact
discrete probabilities of a quantized 2-D Gaussian mixture, the standard-error split, and resume."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import dgjax as dg

LEVELS = 64
Q = dg.Quantization(levels=LEVELS, low=-1.0, high=1.0)
W = Q.bin_width
# a diagonal mixture with components about one bin wide: log p curves strongly inside a bin, so the bounds
# differ visibly from log P(y)
WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[0.10, -0.20], [-0.30, 0.40], [0.45, 0.50]])
STDS = np.array([[0.02, 0.03], [0.04, 0.025], [0.03, 0.05]])


def _mixture():
    return dg.GaussianMixture(jnp.asarray(WEIGHTS), jnp.asarray(MEANS), jnp.asarray(STDS**2))


def _log_pdf(x):
    """Independent numpy/scipy log-density of the mixture, x (..., 2) -> (...)."""
    comp = stats.norm.logpdf(x[..., None, :], MEANS, STDS).sum(-1) + np.log(WEIGHTS)
    return special.logsumexp(comp, axis=-1)


def _exact_log_prob(y):
    """log P(y) = log sum_k w_k prod_d [Phi((hi - mu) / s) - Phi((lo - mu) / s)] (the integral over the bin)."""
    lo = Q.low + y[:, None, :] * W
    mass = stats.norm.cdf(lo + W, MEANS, STDS) - stats.norm.cdf(lo, MEANS, STDS)
    return np.log(np.sum(WEIGHTS * np.prod(mass, axis=-1), axis=-1))


def _uniform_expectation(y, nodes=48):
    """E_u log p(x(y + u)) + D log w by 2-D Gauss-Legendre quadrature over the bin."""
    g, gw = np.polynomial.legendre.leggauss(nodes)
    u, uw = (g + 1) / 2, gw / 2
    uu = np.stack(np.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    ww = np.outer(uw, uw).reshape(-1)
    x = Q.low + (y[:, None, :] + uu[None]) * W
    return np.sum(_log_pdf(x) * ww, axis=-1) + 2 * math.log(W)


def _importance_expectation(y, k, proposal, reps, seed=0):
    """Monte Carlo reference E L_K(y) (numpy, scipy's truncnorm): mean and its standard error, per y."""
    rng = np.random.default_rng(seed)
    if proposal == "uniform":
        u = rng.random((reps, k) + y.shape)
        log_q = np.zeros(u.shape[:-1])
    else:
        s = 0.3
        dist = stats.truncnorm(-0.5 / s, 0.5 / s, loc=0.5, scale=s)
        u = dist.rvs(size=(reps, k) + y.shape, random_state=rng)
        log_q = dist.logpdf(u).sum(-1)
    a = _log_pdf(Q.low + (y + u) * W) - log_q
    lk = special.logsumexp(a, axis=1) - math.log(k) + 2 * math.log(W)  # (reps, N)
    return lk.mean(0), lk.std(0, ddof=1) / math.sqrt(reps)


@pytest.fixture(scope="module")
def levels():
    x = np.asarray(_mixture().sample(jax.random.key(1), 96))
    return np.clip(np.floor((x - Q.low) / W), 0, LEVELS - 1).astype(np.int32)


def _log_density(x):
    """The mixture's exact log-density (LinearFlow at t = 0: alpha = 1, sigma = 0, the data distribution)."""
    return _mixture().log_prob(dg.LinearFlow())(x, 0.0)


def test_quantization_is_the_one_home_of_the_offset():
    assert dg.Quantization(256).offset_bits == 7.0
    assert dg.load_dataset("digits").quantization == dg.Quantization(17, -1.0, 1.0)
    assert dg.load_dataset("digits").offset_bits == math.log2(8.5)
    assert dg.load_dataset("moons").quantization is None
    np.testing.assert_allclose(dg.bits_per_dim(jnp.zeros(2), (4,), dg.Quantization(64, 0.0, 1.0)), 6.0)
    np.testing.assert_allclose(dg.bits_per_dim(jnp.zeros(2), (4,)), 7.0)
    with pytest.raises(dg.InvalidArgument, match="levels"):
        dg.Quantization(1)


def test_uniform_bound_matches_its_integral_and_lies_below_log_p(levels):
    exact = _exact_log_prob(levels)
    expect = _uniform_expectation(levels)
    assert np.all(expect < exact)  # Jensen, per example, computed exactly
    r = dg.evaluate_log_density(_log_density, levels, key=jax.random.key(0), quantization=Q,
                                dequantization=dg.UniformDequantization(repeats=5), batch_size=32)
    diff = r.per_example - expect
    se = r.stderr.dequantization
    # conditional on the data only the dequantization draws are random: its standard error is the yardstick
    assert abs(diff.mean()) < 3 * se
    np.testing.assert_allclose(se, diff.std(ddof=1) / math.sqrt(len(diff)), rtol=0.35)
    assert r.stderr.probe == 0.0 and r.nfe_per_example == 5
    assert exact.mean() - r.nats > 3 * r.stderr.dequantization  # the bound is visibly below log P
    assert r.bits_per_dim == pytest.approx(-r.nats / (2 * math.log(2)))


@pytest.mark.parametrize("proposal", ["uniform", pytest.param("truncnormal", marks=pytest.mark.slow)])
def test_importance_bound_rises_toward_log_p(levels, proposal):
    exact = _exact_log_prob(levels)
    means, refs = [], []
    for k in (1, 4, 16, 64):
        r = dg.evaluate_log_density(_log_density, levels, key=jax.random.key(k), quantization=Q,
                                    dequantization=dg.ImportanceDequantization(draws=k, proposal=proposal),
                                    batch_size=48)
        ref, ref_se = _importance_expectation(levels, k, proposal, reps=max(4096 // k, 64), seed=k)
        diff = r.per_example - ref
        se = math.sqrt(diff.var(ddof=1) / len(diff))
        assert abs(diff.mean()) < 3 * se, (k, diff.mean(), se)
        if k > 1:  # the delta-method standard error agrees with the observed spread
            assert 0.5 < r.stderr.dequantization / se < 2.0, (k, r.stderr.dequantization, se)
        means.append((r.nats, se))
        refs.append((ref.mean(), math.sqrt(np.sum(ref_se**2)) / len(ref)))
    # the expectations (independent Monte Carlo, small standard errors) rise with K toward log P
    for (m0, s0), (m1, s1) in itertools.pairwise(refs):
        assert m1 - m0 > 3 * math.hypot(s0, s1)
    assert refs[-1][0] < exact.mean()
    assert exact.mean() - refs[-1][0] < 0.25 * (exact.mean() - refs[0][0])  # K = 64 closes most of the gap
    # and so do dgjax's estimates, within their noise
    assert all(exact.mean() - m > -3 * s for m, s in means)
    for (m0, s0), (m1, s1) in itertools.pairwise(means):
        assert m1 - m0 > -3 * math.hypot(s0, s1)
    assert exact.mean() - means[-1][0] < 0.25 * (exact.mean() - means[0][0])


def test_ode_path_agrees_with_the_exact_density(levels, x64):
    """The PF-ODE encoding (exact divergence) gives the same per-copy log p as the mixture's density."""
    p = dg.VP()
    gm = dg.GaussianMixture(jnp.asarray(WEIGHTS), jnp.asarray(MEANS), jnp.asarray(STDS**2))
    lp = gm.log_prob(p)
    y = levels[:6]
    kw = dict(key=jax.random.key(3), quantization=Q, dequantization=dg.UniformDequantization(2), batch_size=4)
    ode = dg.evaluate_likelihood(gm.score(p), p, y, divergence=dg.Exact(),
                                 options=dg.SolveOptions(rtol=1e-8, atol=1e-8),
                                 prior_log_prob=lambda x: lp(x, p.t_max), **kw)
    ref = dg.evaluate_log_density(lambda x: lp(x, p.t_min), y, **kw)
    np.testing.assert_allclose(ode.log_density, ref.log_density, atol=2e-4)
    assert ode.nfe_per_example > 2 * 10 and ode.stderr.probe == 0.0


def _resume_setup(tmp_path):
    p = dg.VP()
    gm = _mixture()
    score = gm.score(p)
    kw = dict(key=jax.random.key(5), quantization=Q, dequantization=dg.UniformDequantization(2), batch_size=3,
              divergence=dg.Hutchinson(2), options=dg.SolveOptions(steps=6))
    return score, p, kw


def test_interrupted_evaluation_resumes_to_the_same_numbers(levels, tmp_path):
    score, p, kw = _resume_setup(tmp_path)
    y = levels[:13]  # 5 batches, the last one short
    whole = dg.evaluate_likelihood(score, p, y, **kw)

    class Stop(Exception):
        pass

    def stop_after_two(index, _):
        if index == 1:
            raise Stop

    with pytest.raises(Stop):
        dg.evaluate_likelihood(score, p, y, checkpoint_dir=str(tmp_path), on_batch=stop_after_two, **kw)
    assert sorted(f.name for f in tmp_path.glob("batch_*.npz")) == ["batch_000000.npz", "batch_000001.npz"]
    seen = []
    resumed = dg.evaluate_likelihood(score, p, iter([y[:7], y[7:]]), checkpoint_dir=str(tmp_path),
                                     on_batch=lambda i, _: seen.append(i), **kw)
    assert seen == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(resumed.per_example, whole.per_example)
    np.testing.assert_array_equal(resumed.log_density, whole.log_density)
    assert resumed.nats == whole.nats and resumed.stderr == whole.stderr
    assert np.isfinite(whole.stderr.probe) and np.isfinite(whole.stderr.dequantization)
    # another setting, or other data, refuses to resume from this directory
    with pytest.raises(dg.InvalidArgument, match="differing: batch_size"):
        dg.evaluate_likelihood(score, p, y, checkpoint_dir=str(tmp_path), **dict(kw, batch_size=4))
    with pytest.raises(dg.InvalidArgument, match="other data"):
        dg.evaluate_likelihood(score, p, y[::-1], checkpoint_dir=str(tmp_path), **kw)


def test_bad_arguments_are_named():
    y = np.zeros((4, 2), np.int32)
    with pytest.raises(dg.InvalidArgument, match="quantization"):
        dg.evaluate_log_density(_log_density, y, key=jax.random.key(0))
    with pytest.raises(dg.InvalidArgument, match="integer levels"):
        dg.evaluate_log_density(_log_density, y + 0.5, key=jax.random.key(0), quantization=Q)
    with pytest.raises(dg.InvalidArgument, match="proposal"):
        dg.ImportanceDequantization(proposal="gauss")
    with pytest.raises(dg.InvalidArgument, match="repeats"):
        dg.UniformDequantization(repeats=0)
    with pytest.raises(dg.InvalidArgument, match="key"):
        dg.evaluate_log_density(_log_density, y, key=None, quantization=Q)


@pytest.mark.slow
def test_continuous_data_and_data_space():
    """dequantization=None: log p itself; to_data_space adds a change of variables (here y = 2 x: - D log 2)."""
    x = np.asarray(_mixture().sample(jax.random.key(2), 10))
    r = dg.evaluate_log_density(_log_density, x, key=jax.random.key(0), dequantization=None, batch_size=4)
    np.testing.assert_allclose(r.per_example, _log_pdf(x.astype(np.float64)), rtol=1e-4)
    assert r.offset_bits == 0.0 and r.stderr.dequantization == 0.0
    p = dg.VP()
    out = dg.evaluate_likelihood(_mixture().score(p), p, x[:4], key=jax.random.key(0), dequantization=None,
                                 batch_size=4, options=dg.SolveOptions(steps=4), divergence=dg.Hutchinson(2),
                                 to_data_space=lambda logp, xx: logp - 2 * math.log(2.0))
    np.testing.assert_allclose(out.data_space.per_example, out.per_example - 2 * math.log(2.0), rtol=1e-6)


def _shifted_log_density(shift):
    """The mixture's log-density with its means moved by ``shift`` (a second, nearby model)."""
    mix = dg.GaussianMixture(jnp.asarray(WEIGHTS), jnp.asarray(MEANS + shift), jnp.asarray(STDS**2))
    return lambda x: mix.log_prob(dg.LinearFlow())(x, 0.0)


def test_likelihood_difference_pairs_the_draws(levels):
    """Two models evaluated with the same key saw the same copies: a constant log-density shift comes back exactly
    with zero error; a nearby model's change has the per-example and per-copy differences, a total error from the
    spread of the per-example change (computed here with numpy) and a dequantization part from the copies' spread,
    far below either model's own error (the draws' noise cancels)."""
    y, kw = levels[:40], dict(key=jax.random.key(3), quantization=Q, dequantization=dg.UniformDequantization(4),
                              batch_size=16)
    a = dg.evaluate_log_density(_log_density, y, **kw)
    up = dg.evaluate_log_density(lambda x: _log_density(x) + 0.25, y, **kw)
    same = dg.likelihood_difference(up, a)
    np.testing.assert_allclose(same.per_example, 0.25, rtol=1e-5)
    assert same.stderr.total < 1e-5 and same.stderr.data < 1e-5 and same.stderr.dequantization < 1e-5
    assert same.bits_per_dim == pytest.approx(up.bits_per_dim - a.bits_per_dim, abs=1e-9)

    b = dg.evaluate_log_density(_shifted_log_density(np.array([0.004, -0.003])), y, **kw)
    d = dg.likelihood_difference(b, a)
    np.testing.assert_allclose(d.per_example, b.per_example - a.per_example, rtol=1e-12)
    np.testing.assert_allclose(d.log_density, b.log_density - a.log_density, rtol=1e-12)
    assert d.nats == pytest.approx(b.nats - a.nats, rel=1e-9)
    assert d.bits_per_dim == pytest.approx(b.bits_per_dim - a.bits_per_dim, rel=1e-9)
    change = b.per_example - a.per_example
    assert d.stderr.total == pytest.approx(np.std(change, ddof=1) / math.sqrt(len(y)), rel=1e-9)
    copies = np.asarray(b.log_density, np.float64) - np.asarray(a.log_density, np.float64)
    within = np.mean(np.var(copies, axis=1, ddof=1))
    assert d.stderr.dequantization == pytest.approx(math.sqrt(within / copies.size), rel=1e-9)
    assert d.stderr.total**2 == pytest.approx(d.stderr.data**2 + d.stderr.dequantization**2, rel=1e-9)
    assert math.isnan(d.stderr.probe)
    assert d.stderr.dequantization < 0.2 * min(a.stderr.dequantization, b.stderr.dequantization)
    assert d.nfe_per_example == a.nfe_per_example + b.nfe_per_example


def test_likelihood_difference_refuses_unlike_evaluations(levels):
    y, key = levels[:8], jax.random.key(0)
    a = dg.evaluate_log_density(_log_density, y, key=key, quantization=Q, dequantization=dg.UniformDequantization(2))
    for other in (dg.evaluate_log_density(_log_density, y, key=key, quantization=Q,
                                          dequantization=dg.UniformDequantization(3)),
                  dg.evaluate_log_density(_log_density, y[:6], key=key, quantization=Q,
                                          dequantization=dg.UniformDequantization(2)),
                  dg.evaluate_log_density(_log_density, y, key=key, quantization=Q,
                                          dequantization=dg.ImportanceDequantization(2))):
        with pytest.raises(dg.InvalidArgument, match="^b: evaluated unlike a"):
            dg.likelihood_difference(other, a)
    imp = [dg.evaluate_log_density(f, y, key=key, quantization=Q, dequantization=dg.ImportanceDequantization(4))
           for f in (_log_density, _shifted_log_density(0.003))]
    d = dg.likelihood_difference(imp[1], imp[0])
    change = imp[1].per_example - imp[0].per_example
    assert d.stderr.total == pytest.approx(np.std(change, ddof=1) / math.sqrt(len(y)), rel=1e-9)
    assert math.isnan(d.stderr.data) and math.isnan(d.stderr.dequantization)
