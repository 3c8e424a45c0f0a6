"""Training: the loss falls on digits, checkpoints round-trip exactly, a killed run resumed equals an
uninterrupted one, and checkpoints of another architecture or damaged ones are refused clearly."""

import json
import math
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY_UNET

from dgjax.data import load_dataset
from dgjax.models import ArchitectureMismatch, ModelError, load_model, make_network
from dgjax.training import (
    Checkpoints,
    TrainConfig,
    init_state,
    lambda_density,
    learning_rate,
    make_optimizer,
    sample_lambda,
    train,
    update_histogram,
)

# a small UNet that compiles quickly; no evaluation unless a test asks for it


def config(**over):
    base = dict(data="digits", arch_kwargs=dict(TINY_UNET), steps=4, batch_size=16, lr=2e-3, warmup=2,
                eval_every=10**6, ckpt_every=2, keep=2, seed=3)
    base.update(over)
    return TrainConfig(**base)


assert_trees_equal = chex.assert_trees_all_equal  # same tree structure, and every leaf bit for bit


@pytest.mark.parametrize("warmup,steps", [(10, 60), (2, 4), (0, 5), (7, 7), (5, 3)])
def test_learning_rate_schedule_matches_warmup_then_cosine(warmup, steps):
    """optax's warm-up + cosine schedule against the formula computed here in float64: linear warm-up from 0
    over max(warmup, 1) steps, then lr (f + (1 - f) (1 + cos(pi min(k - w, T) / T)) / 2), T = max(steps - w, 1)."""
    cfg = config(lr=3e-3, warmup=warmup, steps=steps, lr_final_frac=0.1)
    w, T = max(warmup, 1), max(steps - max(warmup, 1), 1)
    for k in range(steps + 3):
        want = (cfg.lr * k / w if k < w else
                cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k - w, T) / T))))
        assert learning_rate(cfg, k) == pytest.approx(want, rel=1e-6, abs=1e-12), k
    assert learning_rate(cfg, 0) == 0.0 and learning_rate(cfg, w) == pytest.approx(cfg.lr, rel=1e-6)


def test_short_training_on_digits_lowers_the_loss(held_out_loss):
    cfg = config(steps=60, lr=3e-3, warmup=10)   # the step compiled here serves the tests below as well
    ds = load_dataset("digits")
    net = make_network("unet", ds.shape, cfg.arch_kwargs)
    held_out_loss = held_out_loss(cfg, net, ds, 128)
    before = held_out_loss(init_state(cfg, net, ds.shape, make_optimizer(cfg))["params"])
    result = train(cfg, None, progress=False, final_eval=False)
    after = held_out_loss(result.state["params"])
    assert after < 0.7 * before, (before, after)
    assert np.mean(result.losses[-20:]) < np.mean(result.losses[:20])


def test_adaptive_importance_sampling_is_a_proper_density():
    cfg = config()
    hist = jnp.ones(cfg.num_bins).at[10].set(50.0)
    probs = lambda_density(hist, cfg)
    assert float(probs.sum()) == pytest.approx(1.0, rel=1e-6) and float(probs.min()) > 0
    lam, p = sample_lambda(jax.random.key(0), hist, 20000, cfg)
    assert float(lam.min()) >= cfg.lambda_min and float(lam.max()) <= cfg.lambda_max
    # E_p[1 / p(lambda)] = length of the interval (importance weights are unbiased)
    assert float(jnp.mean(1.0 / p)) == pytest.approx(cfg.lambda_max - cfg.lambda_min, rel=0.05)
    # the bin with a large running loss is sampled more often
    width = (cfg.lambda_max - cfg.lambda_min) / cfg.num_bins
    in_bin = (lam >= cfg.lambda_min + 10 * width) & (lam < cfg.lambda_min + 11 * width)
    assert float(jnp.mean(in_bin)) == pytest.approx(float(probs[10]), abs=0.02)
    new = update_histogram(jnp.ones(cfg.num_bins), jnp.array([cfg.lambda_min + 0.5 * width]), jnp.array([3.0]), cfg)
    assert float(new[0]) == pytest.approx(cfg.hist_decay + (1 - cfg.hist_decay) * 3.0) and float(new[1]) == 1.0


# every test below uses the same settings, so the compiled step is shared (dgjax.training caches it)
def test_checkpoint_round_trips_exactly_and_exports_a_model(tmp_path):
    cfg = config()
    result = train(cfg, str(tmp_path / "run"), progress=False, final_eval=False)
    ckpts = Checkpoints(str(tmp_path / "run"), read_only=True)
    assert ckpts.all_steps() == [2, 4]                    # every 2 steps, keep=2: the last two
    restored = ckpts.restore(result.state)
    ckpts.close()
    assert_trees_equal(restored, result.state)
    assert int(restored["step"]) == 4
    # the run directory loads as a model (latest checkpoint, EMA parameters), as does its export
    for path in (tmp_path / "run" / "checkpoints" / "..", tmp_path / "run" / "model.msgpack"):
        model = load_model(str(path))
        assert_trees_equal(model.params, result.state["ema_params"])


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    cfg = config()
    full = train(cfg, str(tmp_path / "full"), progress=False, final_eval=False, export=False)

    def kill_at_3(step, state, metrics):  # after the checkpoint at step 2, before the one at 4
        if step == 3:  # (the callback runs after the step: raising here is a kill during step 4's batch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(tmp_path / "cut"), progress=False, final_eval=False, export=False, callback=kill_at_3)
    assert Checkpoints(str(tmp_path / "cut"), read_only=True).latest_step() == 2
    with open(tmp_path / "cut" / "time.json") as fh:  # the killed segment's time up to its checkpoint
        cut_time = json.load(fh)
    assert cut_time["steps"] == 2 and cut_time["train_time_s"] > 0
    with pytest.raises(ValueError, match="already holds a training run; pass --resume"):
        train(cfg, str(tmp_path / "cut"), progress=False, final_eval=False)
    resumed = train(cfg, str(tmp_path / "cut"), resume=True, progress=False, final_eval=False, export=False)
    assert len(resumed.losses) == 2                       # steps 3 and 4 only
    with open(tmp_path / "cut" / "time.json") as fh:      # training time adds up across the segments
        assert json.load(fh)["train_time_s"] > cut_time["train_time_s"]
    assert_trees_equal(resumed.state["params"], full.state["params"])
    assert_trees_equal(resumed.state["ema_params"], full.state["ema_params"])
    assert_trees_equal(resumed.state["opt_state"], full.state["opt_state"])
    np.testing.assert_array_equal(np.asarray(resumed.state["hist"]), np.asarray(full.state["hist"]))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    cfg = config()
    train(cfg, str(tmp_path / "run"), progress=False, final_eval=False, export=False)
    other = config(arch_kwargs=dict(TINY_UNET, channels=16))
    with pytest.raises(ArchitectureMismatch, match="different architecture"):
        train(other, str(tmp_path / "run"), resume=True, progress=False, final_eval=False)
    # the orbax-level check too: restoring into a template of another architecture names the parameters
    ds = load_dataset("digits")
    net = make_network("unet", ds.shape, other.arch_kwargs)
    template = jax.eval_shape(lambda: init_state(other, net, ds.shape, make_optimizer(other)))
    ckpts = Checkpoints(str(tmp_path / "run"), read_only=True)
    with pytest.raises(ArchitectureMismatch,
                       match=r"checkpoint .* different architecture.*expects \(32,\), stored \(16,\)"):
        ckpts.restore(template)
    ckpts.close()
    # changed optimisation settings are refused on resume (the continuation would not be exact)
    with pytest.raises(ValueError, match="different settings.*'lr'"):
        train(config(lr=1e-2), str(tmp_path / "run"), resume=True, progress=False, final_eval=False)


def test_checkpoint_of_another_optimiser_layout_is_refused_by_resume_but_loads_as_a_model(tmp_path):
    """A checkpoint whose optimiser state has another layout (written by the hand-applied learning rate of
    an older dgjax: clip + scale_by_adam, no injected hyperparameters) is refused by name on resume, and
    dg.load_model still reads its parameters (from the checkpoint's own metadata)."""
    import optax

    cfg = TrainConfig(data="moons", arch="mlp", arch_kwargs=dict(width=16, depth=1), steps=2, ckpt_every=1)
    ds = load_dataset("moons")
    net = make_network("mlp", ds.shape, cfg.arch_kwargs)
    old_tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.scale_by_adam())
    old = init_state(cfg, net, ds.shape, old_tx)
    old["step"] = jnp.asarray(1, jnp.int32)
    run = tmp_path / "run"
    run.mkdir()
    from dgjax.training import model_config
    from dgjax.training.checkpoints import _write_json

    _write_json(str(run / "config.json"), {"train": cfg.to_dict(), "model": model_config(cfg, ds.shape)})
    ckpts = Checkpoints(str(run))
    ckpts.save(old)
    with pytest.raises(ModelError, match="optimiser state of another layout"):
        ckpts.restore(init_state(cfg, net, ds.shape, make_optimizer(cfg)))
    ckpts.close()
    with pytest.raises(ModelError, match="another version of dgjax"):
        train(cfg, str(run), resume=True, progress=False, final_eval=False)
    assert_trees_equal(load_model(str(run)).params, old["ema_params"])


def test_corrupt_or_half_written_checkpoints(tmp_path):
    cfg = config()
    run = tmp_path / "run"
    result = train(cfg, str(run), progress=False, final_eval=False, export=False)
    ckdir = run / "checkpoints"
    # a save killed half-way leaves only orbax's temporary directory: it is never taken for a checkpoint,
    # and it is deleted when the run is opened again
    shutil.copytree(ckdir / "4", ckdir / "6.orbax-checkpoint-tmp-1234")
    assert Checkpoints(str(run), read_only=True).latest_step() == 4
    Checkpoints(str(run)).close()
    assert sorted(os.listdir(ckdir)) == ["2", "4"]
    # truncate every data file of the latest checkpoint: a clear error, naming the step
    for root, _, files in os.walk(ckdir / "4"):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "r+b") as fh:
                fh.truncate(max(os.path.getsize(p) // 3, 1))
    ckpts = Checkpoints(str(run), read_only=True)
    with pytest.raises(ModelError, match=r"checkpoint .*4.* is corrupt or truncated"):
        ckpts.restore(result.state)
    ckpts.close()
    with pytest.raises(ModelError, match="corrupt or truncated"):
        train(cfg, str(run), resume=True, progress=False, final_eval=False)
    # a damaged run config is a clear error too
    (run / "config.json").write_text('{"train": {"data": "dig')
    with pytest.raises(ModelError, match="config.json.*corrupt or truncated"):
        load_model(str(run))


def test_bad_settings_and_unwritable_output_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="weighting: choose one of"):
        train(config(weighting="snr"), None, progress=False)
    with pytest.raises(ValueError, match="unknown name 'mnist'"):
        train(config(data="mnist"), None, progress=False)
    with pytest.raises(ValueError, match="not writable"):
        train(config(), "/proc/dgjax-run", progress=False)
    with pytest.raises(ValueError, match="no training run to resume"):
        train(config(), str(tmp_path / "empty"), resume=True, progress=False)


def test_mlp_on_a_toy_set_with_perceptual_weighting_and_bits_per_dim(tmp_path):
    cfg = TrainConfig(data="moons", arch="mlp", arch_kwargs=dict(width=32, depth=2), steps=30, batch_size=64,
                      weighting="sigmoid", eval_every=10**6, ckpt_every=30, final_eval_num=16, eval_rtol=1e-2)
    result = train(cfg, str(tmp_path / "run"), progress=False)
    assert np.isfinite(result.heldout_bpd)
    cfg_json = json.loads((tmp_path / "run" / "model.json").read_text())
    assert cfg_json["heldout_bits_per_dim"] == pytest.approx(result.heldout_bpd)
    assert cfg_json["training"]["weighting"] == "sigmoid"
