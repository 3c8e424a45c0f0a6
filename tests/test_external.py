"""External per-sample networks (dg.external_score) and network-space transforms (dg.log_transform)."""

import jax
import jax.numpy as jnp
import numpy as np

import dgjax as dg


def test_per_sample_score_equals_batched_oracle(x64):
    """The mixture score written per sample (one (D,) vector, scalar t) and adapted == the batched oracle."""
    p = dg.VPCosine()
    gm = dg.random_mixture(jax.random.key(0), 3, (6,), dtype=jnp.float64)
    batched = gm.score(p)
    per_sample = lambda y, t: batched(y[None], t)[0]  # noqa: E731 -- a network that sees one sample
    score = dg.external_score(per_sample, p, "score")
    x = gm.sample_t(jax.random.key(1), 5, p, 0.3)
    np.testing.assert_allclose(score(x, 0.3), batched(x, 0.3), rtol=1e-12)
    t = jnp.linspace(0.1, 0.9, 5)  # one time per sample
    np.testing.assert_allclose(score(x, t), batched(x, t), rtol=1e-12)
    # an eps-parametrised per-sample network: eps = -sigma s
    eps_net = lambda y, t: -p.sigma(t) * batched(y[None], t)[0]  # noqa: E731
    np.testing.assert_allclose(dg.external_score(eps_net, p, "eps")(x, t), batched(x, t), rtol=1e-10)


def test_log_transform_change_of_variables(x64):
    tr = dg.log_transform(0.1, 1.0)
    x = jnp.array([[0.0, 0.5, 2.0], [0.1, 1.0, 3.0]])
    np.testing.assert_allclose(tr.inverse(tr.forward(x)), x, rtol=1e-12)
    np.testing.assert_allclose(tr.log_abs_det(x), np.sum(-np.log(0.1 * (np.asarray(x) + 1)), axis=1), rtol=1e-12)
    # a standard normal in y-space is a proper density of x: it integrates to 1 over x > -1
    xs = jnp.linspace(-1 + 1e-9, 60.0, 400001)[:, None]
    ys = tr.forward(xs)
    logp_y = -0.5 * ys[:, 0] ** 2 - 0.5 * np.log(2 * np.pi)
    px = jnp.exp(tr.data_log_prob(logp_y, ys))
    assert abs(float(jnp.trapezoid(px, xs[:, 0])) - 1.0) < 1e-3
