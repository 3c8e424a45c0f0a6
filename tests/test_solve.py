"""The diffrax solve layer: NFE accounting checked against an evaluation counter, controller choice, errors."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import pytest

import dgjax as dg
from dgjax.solve import StopAtNonFinite, controller, leafwise_rms_norm, solve


@pytest.mark.parametrize("solver", [dfx.Euler(), dfx.Heun(), dfx.Midpoint(), dfx.Bosh3(), dfx.Tsit5(), dfx.Dopri5()],
                         ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("mode", ["steps", "adaptive"])
def test_vf_eval_count_matches_a_counter(solver, mode):
    if mode == "adaptive" and isinstance(solver, (dfx.Euler, dfx.Midpoint)):
        pytest.skip("no embedded error estimate")
    calls = []

    def vf(t, y, args):
        jax.debug.callback(lambda tt: calls.append(1), t)
        return -y * (1.0 + t)

    kw = dict(steps=7) if mode == "steps" else dict(rtol=1e-6, atol=1e-6)
    _, evals, stats = solve(vf, jnp.ones(3), 1.0, 0.0, solver=solver, **kw)
    assert int(evals) == len(calls)
    if mode == "steps":
        assert int(stats["num_steps"]) == 7


def test_sample_nfe_counts_score_calls():
    calls = []
    gm = dg.random_mixture(jax.random.key(0), 2, (3,))
    p = dg.VP()
    inner = gm.score(p)

    def score(x, t):
        jax.debug.callback(lambda tt: calls.append(1), t)
        return inner(x, t)

    x_T = p.prior_sample(jax.random.key(1), (4, 3))
    out = dg.sample(score, p, x_T, rtol=1e-4, atol=1e-4)
    # the trace-time shape check calls score abstractly: only run-time calls are counted
    assert int(out.nfe) == len(calls)


def test_leafwise_norm_weighs_small_leaves():
    y = (jnp.zeros((100, 10)), jnp.ones(3))
    assert float(leafwise_rms_norm(y)) == 1.0


def test_controller_choices():
    ctrl, dt0, max_steps = controller(10, None, None, 1.0, 0.0)
    assert isinstance(ctrl, dfx.ConstantStepSize) and dt0 == -0.1 and max_steps == 10
    ctrl, dt0, _ = controller(None, None, None, 1.0, 0.0)
    assert isinstance(ctrl, StopAtNonFinite) and isinstance(ctrl.controller, dfx.PIDController) and dt0 is None
    with pytest.raises(ValueError, match="steps"):
        controller(10, 1e-3, None, 1.0, 0.0)
    with pytest.raises(ValueError, match="steps"):
        controller(0, None, None, 1.0, 0.0)
    with pytest.raises(ValueError, match="rtol"):
        controller(None, -1.0, None, 1.0, 0.0)


def test_max_steps_reached_is_an_error():
    gm = dg.random_mixture(jax.random.key(0), 2, (3,))
    p = dg.VP()
    with pytest.raises(Exception, match="(?i)max_steps|maximum number of"):
        dg.sample(gm.score(p), p, p.prior_sample(jax.random.key(1), (2, 3)), rtol=1e-9, atol=1e-9, max_steps=3)
