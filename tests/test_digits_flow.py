"""The shipped flow-matching model ``digits-flow`` (velocity on dg.LinearFlow): it loads as a velocity model,
samples, density guidance on it is monotone in q, and every other sampler runs on it (the last is slow).

``DGJAX_FLOW_MODEL`` may name another flow model (a run directory or NAME.msgpack) to check the same way."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

MODEL = os.environ.get("DGJAX_FLOW_MODEL", "digits-flow")
STEPS = dict(steps=8, max_steps=16)

@pytest.fixture(scope="module")
def flow():
    return dg.load_model(MODEL)


def test_digits_flow_loads_as_a_velocity_model_and_samples(flow):
    assert isinstance(flow.process, dg.LinearFlow) and flow.parametrization == "v"
    assert flow.config["objective"] == "flow" and flow.shape == (8, 8, 1)
    if MODEL == "digits-flow":
        assert np.isfinite(flow.config["heldout_bits_per_dim"])
    x_T = flow.prior_sample(jax.random.key(0), 4)
    out = dg.sample(flow.score, flow.process, x_T, key=jax.random.key(1), track_logp=True, **STEPS)
    assert out.x.shape == (4, 8, 8, 1) and np.all(np.isfinite(out.x)) and np.all(np.isfinite(out.logp))
    assert np.abs(out.x).max() < 3.0              # data lie in [-1, 1]; a broken score would blow up
    levels = flow.dataset.transform.to_data(out.x)
    assert levels.min() >= 0 and levels.max() <= 16


def test_density_guidance_on_digits_flow_is_monotone_in_q(flow):
    qs = [0.2, 0.35, 0.5, 0.55]   # LinearFlow spans lambda in [-13.8, 13.8]: q = 0.6 asks for ~40 nats, infeasible
    x_T = flow.prior_sample(jax.random.key(2), 6)

    @jax.jit
    def mean_logp(q, key):
        out = dg.sample(flow.score, flow.process, x_T, sampler=dg.DensityGuidance(q), key=key, track_logp=True,
                        **STEPS)
        return jnp.mean(out.logp)

    means = [float(mean_logp(jnp.float32(q), jax.random.key(3))) for q in qs]
    assert np.all(np.isfinite(means)) and np.all(np.diff(means) > 0), means


@pytest.mark.slow
def test_every_sampler_runs_on_digits_flow(flow):
    p, key = flow.process, jax.random.key(4)
    x_T = flow.prior_sample(jax.random.key(5), 4)
    pf = dg.sample(flow.score, p, x_T, key=key, track_logp=True, **STEPS)
    # prior guidance at q > 0.5: smaller latents, higher log p_T, and higher final log p than the PF-ODE
    pg = dg.sample(flow.score, p, dg.prior_guidance(p, x_T, 0.9), key=key, track_logp=True, **STEPS)
    assert np.mean(pg.logp) > np.mean(pf.logp)
    hd = dg.sample(flow.score, p, x_T, sampler=dg.HighDensity(0.5), key=key, track_logp=True, **STEPS)
    assert np.all(np.isfinite(hd.x)) and np.mean(hd.logp) > np.mean(pf.logp)
    al = dg.score_alignment(flow.score, p, x_T, 0.05, **STEPS)
    assert np.all(np.isfinite(np.asarray(al)))
    sdg_sampler = dg.StochasticDensityGuidance(0.45, dg.noise_window(0.2, 0.3, 0.7))  # 0.55: infeasible with noise
    sdg = dg.sample(flow.score, p, x_T, sampler=sdg_sampler, key=key, track_logp=True, steps=32)
    assert np.all(np.isfinite(sdg.x)) and np.all(np.isfinite(sdg.logp))
