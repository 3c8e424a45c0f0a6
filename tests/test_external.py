"""External per-sample networks (dg.external_score) and network-space transforms (dg.log_transform)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_equinox_and_flax_modules(x64):
    """Per-sample Equinox and Flax (linen) networks, ``net(y (D,), t scalar)``: the adapter equals a Python
    loop over the samples, for a shared t and for one t per sample, with the eps conversion -eps / sigma_t."""
    import flax.linen as nn

    p, d, n = dg.VP(), 6, 5

    class EqxNet(eqx.Module):
        mlp: eqx.nn.MLP

        def __call__(self, y, t):
            return self.mlp(jnp.concatenate([y, t[None]]))

    class FlaxNet(nn.Module):
        @nn.compact
        def __call__(self, y, t):
            return nn.Dense(d)(jnp.tanh(nn.Dense(16)(jnp.concatenate([y, t[None]]))))

    eqx_net = EqxNet(eqx.nn.MLP(d + 1, d, 16, 2, key=jax.random.key(0)))
    params = FlaxNet().init(jax.random.key(1), jnp.zeros(d), jnp.zeros(()))
    flax_net = lambda y, t: FlaxNet().apply(params, y, t)  # noqa: E731
    x = jax.random.normal(jax.random.key(2), (n, d))
    ts = jnp.linspace(0.1, 0.9, n)
    for net in (eqx_net, flax_net):
        loop = np.stack([np.asarray(net(x[i], ts[i])) for i in range(n)])
        loop_shared = np.stack([np.asarray(net(x[i], jnp.asarray(0.4))) for i in range(n)])
        np.testing.assert_allclose(dg.external_score(net, p, "score")(x, ts), loop, rtol=1e-12)
        np.testing.assert_allclose(dg.external_score(net, p, "score")(x, 0.4), loop_shared, rtol=1e-12)
        np.testing.assert_allclose(dg.external_score(net, p, "eps")(x, ts),
                                   -loop / np.asarray(p.sigma(ts))[:, None], rtol=1e-10)


def test_external_bad_input():
    p = dg.VP()
    score = dg.external_score(lambda y, t: -y, p, "score")
    with pytest.raises(ValueError, match=r"t: expected a scalar or shape \(2,\)"):
        score(jnp.zeros((2, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="parametrization"):
        dg.external_score(lambda y, t: -y, p, "epsilon")
    with pytest.raises(ValueError, match="scale"):
        dg.log_transform(0.0, 1.0)
    with pytest.raises(ValueError, match="returned shape"):  # a network whose output is not like y
        dg.sample(dg.external_score(lambda y, t: y[:2], p, "score"), p, jnp.zeros((2, 3)), steps=2)


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


def test_per_sample_adapters_give_equal_results_through_sampling(x64):
    """The same mixture score as a per-sample function and as an Equinox module, adapted by
    dg.external_score, gives the batched oracle's samples and tracked log p through dg.sample (exact
    divergence: the JVP goes through the vmap), on galaxygrad's process."""
    import diffrax as dfx

    p = dg.VPSDE(1.0, 1.0, 10.0)
    gm = dg.random_mixture(jax.random.key(2), 3, (8,), dtype=jnp.float64)
    batched = gm.score(p)

    class EqxNet(eqx.Module):
        scale: jax.Array

        def __call__(self, y, t):
            return self.scale * batched(y[None], t)[0]

    nets = {"function": lambda y, t: batched(y[None], t)[0], "equinox": EqxNet(jnp.ones((), jnp.float64))}
    x_T = p.prior_sample(jax.random.key(3), (4, 8))
    kw = dict(key=jax.random.key(4), track_logp=True, divergence=dg.Exact(), solver=dfx.Heun(), steps=48,
              logp_T=gm.log_prob(p)(x_T, p.t_max))
    ref = dg.sample(batched, p, x_T, **kw)
    for name, net in nets.items():
        out = dg.sample(dg.external_score(net, p, "score"), p, x_T, **kw)
        np.testing.assert_allclose(out.x, ref.x, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(out.logp, ref.logp, rtol=1e-10, err_msg=name)
