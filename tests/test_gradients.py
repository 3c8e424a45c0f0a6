"""Gradients through log p (issue 25, item 3): ``jax.grad`` of ``dg.log_likelihood`` and of a tracked log p from
``dg.sample`` with respect to a score's parameters, under diffrax's default adjoint (recursive checkpointing) and
``BacksolveAdjoint`` (memory flat in the number of steps), which needs the parameters passed to the solve in ``args``
rather than closed over (``dgjax.solve.split_args``).

Oracle: a Gaussian mixture (its means are leaves of ``mix.score(P)``), started from its own exact marginal at
t_max (``prior_log_prob``), so the PF-ODE transports log p exactly and the gradient of the exact
``log p_{t_min}`` is the reference."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

P = dg.VP()
ADJOINTS = {"recursive": lambda: None, "backsolve": dfx.BacksolveAdjoint}


def _mixture():
    return dg.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[1.0, -0.5], [-1.0, 0.8]]), jnp.array([0.2, 0.4]))


def _with_means(mix, means):
    return eqx.tree_at(lambda m: m.means, mix, means)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def test_mixture_score_is_a_pytree_of_its_arrays():
    mix = _mixture()
    leaves = jax.tree_util.tree_leaves(mix.score(P))
    assert any(leaf is mix.means for leaf in leaves)


@pytest.mark.parametrize("adjoint", sorted(ADJOINTS))
def test_grad_of_log_likelihood_wrt_means_matches_exact(x64, adjoint):
    mix = _mixture()
    x0 = mix.sample(jax.random.key(1), 3)
    adj = ADJOINTS[adjoint]()

    def exact(means):
        return jnp.mean(_with_means(mix, means).log_prob(P)(x0, P.t_min))

    def ode(means):
        m = _with_means(mix, means)
        out = dg.log_likelihood(m.score(P), P, x0, divergence=dg.Exact(), rtol=1e-9, atol=1e-9, adjoint=adj,
                                prior_log_prob=lambda x: m.log_prob(P)(x, P.t_max))
        return jnp.mean(out.logp)

    g_exact = jax.grad(exact)(mix.means)
    g = jax.jit(jax.grad(ode))(mix.means)
    assert _rel(g, g_exact) < 1e-4, (g, g_exact)


@pytest.mark.slow
@pytest.mark.parametrize("adjoint", sorted(ADJOINTS))
def test_grad_of_log_likelihood_wrt_inputs_matches_exact(x64, adjoint):
    mix = _mixture()
    x0 = mix.sample(jax.random.key(2), 3)
    adj = ADJOINTS[adjoint]()
    score, prior = mix.score(P), (lambda x: mix.log_prob(P)(x, P.t_max))

    def ode(x):
        out = dg.log_likelihood(score, P, x, divergence=dg.Exact(), rtol=1e-9, atol=1e-9, adjoint=adj,
                                prior_log_prob=prior)
        return jnp.sum(out.logp)

    g_exact = jax.grad(lambda x: jnp.sum(mix.log_prob(P)(x, P.t_min)))(x0)
    g = jax.jit(jax.grad(ode))(x0)
    assert _rel(g, g_exact) < 1e-4, (g, g_exact)


@pytest.mark.slow
@pytest.mark.parametrize("adjoint", sorted(ADJOINTS))
def test_grad_of_tracked_logp_from_sample_matches_exact_log_prob(x64, adjoint):
    """d/dmeans of the tracked log p of PF-ODE samples equals d/dmeans of the exact log p_{t_min} at the (same,
    mean-dependent) samples: both differentiate through the solve, only one through the tracked integral."""
    mix = _mixture()
    x_T = jax.random.normal(jax.random.key(3), (3, 2))
    adj = ADJOINTS[adjoint]()

    def run(means):
        m = _with_means(mix, means)
        return dg.sample(m.score(P), P, x_T, track_logp=True, divergence=dg.Exact(), rtol=1e-9, atol=1e-9,
                         adjoint=adj, logp_T=lambda x: m.log_prob(P)(x, P.t_max)), m

    def tracked(means):
        return jnp.mean(run(means)[0].logp)

    def exact_at_samples(means):
        out, m = run(means)
        return jnp.mean(m.log_prob(P)(out.x, P.t_min))

    g = jax.jit(jax.grad(tracked))(mix.means)
    g_ref = jax.jit(jax.grad(exact_at_samples))(mix.means)
    assert _rel(g, g_ref) < 1e-4, (g, g_ref)


@pytest.mark.slow  # four compilations (about 10 s each on a quiet CPU)
def test_backsolve_memory_is_flat_in_the_number_of_steps():
    """XLA's temp bytes of the compiled gradient (benchmarks/bench_grad_memory.py): BacksolveAdjoint's do not
    change from 8 to 64 steps; recursive checkpointing's grow."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.bench_grad_memory import grad_memory_rows

    rows = grad_memory_rows((8, 64), dim=192, n=4, digits=False)
    temp = {(r["adjoint"], r["steps"]): r["temp_bytes"] for r in rows}
    assert temp[("BacksolveAdjoint", 8)] == temp[("BacksolveAdjoint", 64)]
    assert temp[("RecursiveCheckpointAdjoint", 64)] > temp[("RecursiveCheckpointAdjoint", 8)]


@pytest.mark.parametrize("score_free", [False, True], ids=["tangent", "score-free"])
def test_grad_of_score_alignment_is_the_same_under_both_adjoints(x64, score_free):
    """The alignment's solves take the score's arrays through args too, so BacksolveAdjoint differentiates them
    (it rejected closed-over tracers); its gradient equals the default adjoint's (both differentiate the same
    ODE: they differ by the solve tolerance only)."""
    mix = dg.random_mixture(jax.random.key(3), 2, (3,), dtype=jnp.float64)
    x_T = P.prior_sample(jax.random.key(4), (4, 3)).astype(jnp.float64)
    kw = dict(score_free=True, key=jax.random.key(5), divergence=dg.Exact()) if score_free else {}

    def mean_alignment(means, adjoint):
        m = dg.GaussianMixture(jnp.exp(mix.log_weights), means, mix.variances)
        return jnp.mean(dg.score_alignment(m.score(P), P, x_T, 0.4, rtol=1e-9, atol=1e-9, adjoint=adjoint, **kw))

    ref = jax.grad(mean_alignment)(mix.means, dfx.RecursiveCheckpointAdjoint())
    back = jax.grad(mean_alignment)(mix.means, dfx.BacksolveAdjoint())
    assert float(jnp.max(jnp.abs(ref))) > 1e-3
    np.testing.assert_allclose(back, ref, rtol=1e-4, atol=1e-8)
