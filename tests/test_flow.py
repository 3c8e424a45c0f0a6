"""Flow matching (``dgjax train --objective flow``): the loss falls on a toy set, a killed run resumes exactly,
the model file records objective / process / parametrization and loads as a velocity model, and the exact
flow-matching velocity of the Gaussian-mixture oracle converts to its exact score (docs/math.md 2, 8)."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg
from dgjax.data import load_dataset
from dgjax.models import load_model, make_network
from dgjax.training import TrainConfig, init_state, make_optimizer, train


def flow_config(**over):
    base = dict(data="moons", arch="mlp", arch_kwargs=dict(width=32, depth=2), objective="flow",
                importance="uniform", steps=4, batch_size=64, lr=3e-3, warmup=2, eval_every=10**6, ckpt_every=2,
                keep=2, seed=5)
    base.update(over)
    return TrainConfig(**base)


def exact_velocity(gm, x, t):
    """E[eps - x0 | x_t = x] for x_t = (1 - t) x0 + t eps, x0 ~ the mixture (diagonal Gaussians), computed
    here in numpy from the per-component Gaussian posteriors (independent of dgjax's score code): the
    minimiser of the flow-matching loss."""
    w = np.exp(np.asarray(gm.log_weights, np.float64))
    mu = np.asarray(gm.means, np.float64).reshape(len(w), -1)
    var = np.asarray(gm.variances, np.float64).reshape(len(w), -1)
    xf = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    a, s = 1.0 - t, t
    cov = a**2 * var + s**2                                          # (K, D): Var[x_t | k]
    r = xf[:, None, :] - a * mu[None]                                # (N, K, D)
    logp = np.log(w)[None] - 0.5 * np.sum(r**2 / cov + np.log(2 * np.pi * cov), axis=-1)
    post = np.exp(logp - logp.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)                          # p(k | x_t)
    e_x0 = mu[None] + a * var / cov * r                              # E[x0 | x_t, k]
    e_eps = s / cov * r                                              # E[eps | x_t, k]
    v = np.sum(post[..., None] * (e_eps - e_x0), axis=1)
    return v.reshape(x.shape)


@pytest.mark.parametrize("frac", [0.05, 0.5, 0.95])
def test_exact_flow_velocity_of_the_oracle_converts_to_its_exact_score(frac, x64):
    process = dg.LinearFlow()
    gm = dg.random_mixture(jax.random.key(0), 3, (2, 3), dtype=jnp.float64)
    t = process.t_min + frac * (process.t_max - process.t_min)
    x = gm.sample_t(jax.random.key(1), 6, process, t)
    v = exact_velocity(gm, x, t)
    score = dg.score_from(lambda xx, tt: jnp.asarray(v), process, "v")
    np.testing.assert_allclose(score(x, t), gm.score(process)(x, t), rtol=1e-9, atol=1e-9)


def test_flow_matching_lowers_its_loss_on_a_toy_set(held_out_loss):
    cfg = flow_config(steps=150, warmup=10)
    ds = load_dataset("moons")
    net = make_network("mlp", ds.shape, cfg.arch_kwargs)
    held_out_loss = held_out_loss(cfg, net, ds, 256)  # fixed examples, times and noise
    before = held_out_loss(init_state(cfg, net, ds.shape, make_optimizer(cfg))["params"])
    result = train(cfg, None, progress=False, final_eval=False)
    after = held_out_loss(result.state["params"])
    # E|eps - x|^2 / 2D ~ 1 at the start; the optimum is E Var[eps - x | x_t] / 2D, well below it
    assert after < 0.8 * before, (before, after)
    assert np.mean(result.losses[-30:]) < np.mean(result.losses[:30])


def test_flow_run_resumes_exactly_and_exports_a_velocity_model(tmp_path):
    cfg = flow_config()
    full = train(cfg, str(tmp_path / "full"), progress=False, final_eval=False, export=False)

    def kill_at_3(step, state, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(tmp_path / "cut"), progress=False, final_eval=False, export=False, callback=kill_at_3)
    resumed = train(cfg, str(tmp_path / "cut"), resume=True, progress=False, final_eval=False)
    assert len(resumed.losses) == 2
    chex.assert_trees_all_equal(resumed.state, full.state)

    # a run directory without an exported model loads from its latest checkpoint (EMA parameters)
    from_ckpt = load_model(str(tmp_path / "full"))
    assert from_ckpt.parametrization == "v" and isinstance(from_ckpt.process, dg.LinearFlow)
    chex.assert_trees_all_equal(from_ckpt.params, full.state["ema_params"])

    stored = json.loads((tmp_path / "cut" / "model.json").read_text())
    assert (stored["objective"], stored["parametrization"], stored["process"]["name"]) == ("flow", "v", "LinearFlow")
    model = load_model(str(tmp_path / "cut"))
    assert model.parametrization == "v" and isinstance(model.process, dg.LinearFlow)
    # the score is 2 (f x - v) / g^2 with LinearFlow's f = -1/(1-t), g^2 = 2t/(1-t), written out here
    x = jnp.asarray(load_dataset("moons").split("test", 5))
    t = 0.3
    v = model.apply(x, t)
    expected = 2.0 * (-x / (1 - t) - v) / (2 * t / (1 - t))
    np.testing.assert_allclose(model.score(x, t), expected, rtol=1e-5, atol=1e-5)


def test_flow_objective_rejects_settings_it_does_not_use():
    with pytest.raises(ValueError, match="importance"):
        flow_config(importance="adaptive").validate()
    with pytest.raises(ValueError, match="weighting"):
        flow_config(weighting="sigmoid").validate()
    with pytest.raises(ValueError, match="objective"):
        flow_config(objective="edm").validate()


def test_flow_process_config_round_trips_and_bad_configs_are_model_errors():
    from dgjax.models import ModelError, TrainedModel, process_from_config, process_to_config

    assert process_from_config(process_to_config(dg.LinearFlow(2e-3))).eps == 2e-3
    with pytest.raises(ModelError, match="unknown process field"):
        process_from_config({"name": "LinearFlow", "lambda_min": -10.0})
    with pytest.raises(ModelError, match="eps"):
        process_from_config({"name": "LinearFlow", "eps": 0.7})
    cfg = dict(arch="mlp", arch_kwargs=dict(width=8, depth=1), shape=[2], parametrization="bogus",
               process={"name": "LinearFlow", "eps": 1e-3})
    with pytest.raises(ModelError, match="parametrization"):
        TrainedModel(make_network("mlp", (2,), dict(width=8, depth=1)), {}, cfg)
