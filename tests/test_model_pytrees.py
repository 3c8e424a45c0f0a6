"""Models as pytrees (issue 23, item 5): a loaded model's parameters are its leaves and everything else is static,
so ``jax.grad(loss)(model)`` differentiates with respect to every parameter and ``model.score`` is a pure function
of the model; model-aware calls (``model.sample``, ``model.log_likelihood``, ``dg.sample(model, ...)``) carry the
model's process and data range, so density guidance leaving the data is reported by the library as by the CLI.

The gradient is checked against a central difference of the same function along a random unit direction in
parameter space (float32: the step is large enough that rounding of log p, about |log p| 1e-7, is small against
the difference, and small enough that the cubic term is negligible; the function is smooth in the parameters)."""

import importlib.util

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import random_params, tiny_model_config

import dgjax as dg

KEY = jax.random.key(0)


def _mean_logp(x):
    def f(model):  # fixed probes (KEY), two constant Heun steps: small and fast, smooth in the parameters
        return jnp.mean(model.log_likelihood(x, key=KEY, solver=dfx.Heun(), steps=2).logp)

    return f


def _check_grad_along_random_direction(model, x, eps):
    """In float64 (the ``x64`` fixture): in float32 the solve's rounding, amplified by 1 / (2 eps), is of the
    order of the difference itself (23% and 48% off on digits-flow and the galaxy model, with a correct
    gradient)."""
    model = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)
    x = jnp.asarray(x, jnp.float64)
    f = _mean_logp(x)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    g = jax.jit(jax.grad(f))(model)  # plain jax.grad: every leaf of a model is a parameter
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    v = [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)]
    norm = jnp.sqrt(sum(jnp.sum(u * u) for u in v))
    v = jax.tree_util.tree_unflatten(treedef, [u / norm for u in v])
    directional = sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array)),
                                                       jax.tree_util.tree_leaves(v), strict=True))
    f_at = eqx.filter_jit(lambda p: f(eqx.combine(p, static)))
    plus = f_at(jax.tree_util.tree_map(lambda p, u: p + eps * u, params, v))
    minus = f_at(jax.tree_util.tree_map(lambda p, u: p - eps * u, params, v))
    central = (plus - minus) / (2 * eps)
    assert abs(float(directional)) > 1e-3, directional  # a direction that moves log p at all
    assert abs(float(directional) - float(central)) <= 0.01 * abs(float(central)), (directional, central)
    return g


def test_trained_model_is_a_pytree_of_its_parameters():
    m = dg.load_model("digits")
    assert isinstance(m, dg.AbstractModel) and isinstance(m, eqx.Module)
    leaves = jax.tree_util.tree_leaves(m)
    assert len(leaves) == len(jax.tree_util.tree_leaves(m.params))
    assert all(isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves)
    # the score is a pure function of the model: a pytree holding the very same parameter arrays
    score_leaves = jax.tree_util.tree_leaves(m.score)
    assert len(score_leaves) == len(leaves) and all(a is b for a, b in zip(score_leaves, leaves, strict=True))
    # rebuilding from other leaves changes the score (nothing closed over)
    x = jnp.asarray(m.dataset.split("test", 2))
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, m)
    assert not np.allclose(m.score(x, 0.5), zeroed.score(x, 0.5))


def test_grad_wrt_a_small_trained_model_matches_central_difference(tmp_path, x64):
    """The same path as a shipped model (a model file loaded as a TrainedModel), with a small UNet so that the
    gradient through the PF-ODE solve compiles in seconds; the shipped models are checked by the slow tests."""
    from dgjax.models import load_model, save_model

    cfg = tiny_model_config()
    params = random_params(cfg)  # random (not zero-initialised) output layers: the score depends on all
    save_model(str(tmp_path / "tiny"), params, cfg)
    m = load_model(str(tmp_path / "tiny.msgpack"))
    g = _check_grad_along_random_direction(m, jnp.asarray(m.dataset.split("test", 2)), eps=1e-2)
    assert isinstance(g, dg.TrainedModel)  # jax.grad's result has the model's structure


@pytest.mark.slow
def test_grad_wrt_digits_model_matches_central_difference(x64):
    m = dg.load_model("digits")
    g = _check_grad_along_random_direction(m, jnp.asarray(m.dataset.split("test", 2)), eps=1e-2)
    assert isinstance(g, dg.TrainedModel)  # jax.grad's result has the model's structure


@pytest.mark.slow
def test_grad_wrt_digits_flow_model_matches_central_difference(x64):
    m = dg.load_model("digits-flow")
    _check_grad_along_random_direction(m, jnp.asarray(m.dataset.split("test", 2)), eps=1e-2)


@pytest.mark.slow
def test_grad_wrt_galaxy_model_matches_central_difference(x64):
    if importlib.util.find_spec("galaxygrad") is None:  # not importorskip: importing it is load_model's job
        pytest.skip("galaxygrad is not installed")
    m = dg.load_model("galaxies-hsc32")  # loads under x64 too (galaxygrad's float32 weights)
    assert isinstance(m, dg.AbstractModel)
    assert all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree_util.tree_leaves(m))
    y = m.prior_sample(jax.random.key(2), 2) * 0.1 + 0.5  # a smooth point in the network's y-space
    # strongly curved along a random direction: central differences reach the derivative only below eps = 1e-4
    _check_grad_along_random_direction(m, y, eps=1e-5)


def test_density_guidance_through_the_model_reports_leaving_the_data_range():
    """dg.sample(model, ...) and model.sample(...) give the model's data range to density guidance: at q = 0.1
    on digits the samples leave [-1, 1] (the CLI refuses the row; the library raises dg.LeftDataRange)."""
    m = dg.load_model("digits")
    x_T = m.prior_sample(jax.random.key(3), 8)
    with pytest.raises(dg.LeftDataRange):
        m.sample(x_T, sampler=dg.DensityGuidance(0.1), steps=8)
    with pytest.raises(dg.LeftDataRange):
        dg.sample(m, x_T, sampler=dg.DensityGuidance(0.1), steps=8)


def test_model_calls_take_the_models_process():
    m = dg.load_model("digits")
    x = jnp.asarray(m.dataset.split("test", 2))
    a = m.log_likelihood(x, key=KEY, solver=dfx.Heun(), steps=2).logp
    b = dg.log_likelihood(m.score, m.process, x, key=KEY, solver=dfx.Heun(), steps=2).logp
    np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="process"):
        dg.log_likelihood(m, dg.VE(), x, key=KEY)


def test_external_score_is_a_pytree_of_the_network():
    net = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(4))

    def per_sample(y, t):
        return net(jnp.concatenate([y, t[None]]))

    module = eqx.Partial(lambda n, y, t: n(jnp.concatenate([y, t[None]])), net)
    score = dg.external_score(module, dg.VP(), "eps")
    assert any(leaf is net.layers[0].weight for leaf in jax.tree_util.tree_leaves(score))
    x = jax.random.normal(jax.random.key(5), (4, 2))
    np.testing.assert_allclose(score(x, 0.3), dg.score_from(dg.batched(per_sample), dg.VP(), "eps")(x, 0.3),
                               rtol=1e-6)
