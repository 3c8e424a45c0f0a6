"""Reliability (issue 15): no silent wrong answers, no aborts on many devices, no lost training work.

One test (or a few) per item of the issue, each named by the behaviour it checks. Each reproduces the reported
behaviour; the sharded ones run in a subprocess with 2 virtual CPU devices and a timeout (a regression would hang and
abort, not fail).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY_UNET

import dgjax as dg
from dgjax.cli import main
from dgjax.models import ModelError, load_model
from dgjax.training import Checkpoints, TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = dg.VP()
MIX = dg.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]]),
                         jnp.array([[0.1, 0.1], [0.1, 0.1]]))
SCORE = MIX.score(P)


def latents(n=4, d=2, seed=0):
    return P.prior_sample(jax.random.key(seed), (n, d))


def small_config(**over):
    # a tiny MLP on a 2-D toy set: compiles in about a second (the UNet takes a minute on 2 shared cores)
    base = dict(data="moons", arch="mlp", arch_kwargs=dict(width=16, depth=1), steps=4, batch_size=16, lr=2e-3,
                warmup=2, eval_every=10**6, ckpt_every=2, keep=2, seed=3)
    base.update(over)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------------------
# 1. run-time errors under sharding: a Python exception on every process, no hang, no SIGABRT
# ---------------------------------------------------------------------------------------------------------
SHARDED = """
import time, jax, jax.numpy as jnp, numpy as np, dgjax as dg
assert len(jax.devices()) == 2
P = dg.VP()
mix = dg.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]]),
                         jnp.array([[0.1, 0.1], [0.1, 0.1]]))
score = mix.score(P)
x = P.prior_sample(jax.random.key(0), (4, 2))
def raises(fn, exc, match):
    t = time.time()
    try:
        fn()
    except exc as e:
        assert match in str(e), str(e)
        assert time.time() - t < 30, time.time() - t
        return
    raise AssertionError("no error")
# infeasible guidance (a run-time check inside the solve): raised on the host after the program returns
raises(lambda: dg.sample_sharded(score, P, x, sampler=dg.DensityGuidance(0.99), steps=8), FloatingPointError,
       "NaN or inf on some of the 2 devices")
# max_steps reached (diffrax's own run-time check)
raises(lambda: dg.sample_sharded(score, P, x, rtol=1e-9, atol=1e-9, max_steps=2), FloatingPointError, "max_steps")
# a NaN score: the output check names the failure
raises(lambda: dg.log_likelihood_sharded(lambda x, t: x * jnp.nan, P, x, steps=4, divergence=dg.Exact()),
       FloatingPointError, "NaN")
# NaN in x_T: checked eagerly, before anything is compiled
raises(lambda: dg.sample_sharded(score, P, x.at[1, 0].set(jnp.nan), steps=4), ValueError, "x_T contains non-finite")
# and a good call still works, equal to one device
out = dg.sample_sharded(score, P, x, steps=8, track_logp=True, divergence=dg.Exact())
ref = dg.sample(score, P, x, steps=8, track_logp=True, divergence=dg.Exact())
np.testing.assert_allclose(np.asarray(out.logp), np.asarray(ref.logp), rtol=1e-5, atol=1e-5)
print("OK")
"""


@pytest.mark.slow  # 4 compiles in a 2-device subprocess: ~25-50 s on 2 shared cores
def test_sharded_runtime_errors_raise_instead_of_aborting():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=240,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK")
    assert "Involuntary full rematerialization" not in res.stderr  # no host-callback branch in the program


# ---------------------------------------------------------------------------------------------------------
# 2. load_model on a run with checkpoints but no exported model;  10. training reliability
# ---------------------------------------------------------------------------------------------------------
def test_load_model_of_a_run_without_export(tmp_path):
    run = str(tmp_path / "run")
    result = train(small_config(), run, progress=False, final_eval=False, export=False)
    assert not os.path.exists(os.path.join(run, "model.msgpack"))
    model = load_model(run)
    for a, b in zip(jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(result.state["ema_params"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path):
    run = str(tmp_path / "run")
    cfg = small_config(steps=6, ckpt_every=500)  # no periodic checkpoint before the end

    def term_at_3(step, state, metrics):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler: the step finishes, then saves

    from dgjax.training import TrainingInterrupted

    with pytest.raises(TrainingInterrupted, match="signal 15.*checkpoint was saved at step 3"):
        train(cfg, run, progress=False, final_eval=False, export=False, callback=term_at_3)
    assert Checkpoints(run, read_only=True).latest_step() == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    full = train(cfg, str(tmp_path / "full"), progress=False, final_eval=False, export=False)
    resumed = train(cfg, run, resume=True, progress=False, final_eval=False, export=False)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state["params"]), jax.tree_util.tree_leaves(full.state["params"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_directory_is_locked(tmp_path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a") as fh:  # another process holding the run
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = ("from dgjax.training import TrainConfig, train\n"
                "train(TrainConfig(arch='mlp', data='moons', arch_kwargs=dict(width=8, depth=1), steps=2), "
                f"{str(run)!r}, progress=False, final_eval=False)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                             env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
    assert res.returncode != 0 and "is in use by another training process" in res.stderr
    assert sorted(os.listdir(run)) == [".lock"]  # nothing written


def test_invalid_network_writes_nothing_and_does_not_block(tmp_path, capsys):
    run = str(tmp_path / "run")
    bad = small_config(data="digits", arch="unet", arch_kwargs=dict(TINY_UNET, channels=0))
    with pytest.raises(ValueError, match="do not build a network.*--channels"):
        train(bad, run, progress=False, final_eval=False)
    assert not os.path.exists(run)  # no config.json that would block the corrected command
    assert main(["train", "--channels", "0", "--out", run, "--no-progress"]) == 2  # refused by the parser
    assert "--channels" in capsys.readouterr().err
    train(small_config(steps=2), run, progress=False, final_eval=False, export=False)  # the corrected command


def test_finite_corruption_of_a_checkpoint_is_detected(tmp_path):
    run = str(tmp_path / "run")
    result = train(small_config(), run, progress=False, final_eval=False, export=False)
    ckpts = Checkpoints(run, read_only=True)
    good = ckpts.restore(result.state)
    ckpts.close()
    # a checkpoint whose stored parameters changed by a finite amount after it was written (as a flipped
    # mantissa bit would): step 6 holds damaged values next to the checksum of the good ones
    from dgjax.models.checkpoints import _to_saveable
    from dgjax.training import state_checksum

    leaf = jax.tree_util.tree_leaves(good["params"])[0]
    damaged = jax.tree_util.tree_map(lambda v: v + 0.5 if v is leaf else v, good)
    w = Checkpoints(run, keep=3)
    w.manager.save(6, args=w._ocp.args.StandardSave(_to_saveable(damaged)), force=True)
    w.manager.wait_until_finished()
    w.close()
    (tmp_path / "run" / "checksums" / "6.sha256").write_text(state_checksum(good) + "\n")
    ckpts = Checkpoints(run, read_only=True)
    with pytest.raises(ModelError, match="differ from the checksum"):
        ckpts.restore(result.state)
    ckpts.close()


# ---------------------------------------------------------------------------------------------------------
# 3. NaN parameters are refused on load
# ---------------------------------------------------------------------------------------------------------
def test_model_file_with_nan_parameters_is_refused(tmp_path, capsys):
    import flax.serialization

    from dgjax.models import WEIGHTS_DIR

    blob = open(os.path.join(WEIGHTS_DIR, "digits.msgpack"), "rb").read()
    state = flax.serialization.msgpack_restore(blob)
    first = jax.tree_util.tree_leaves_with_path(state)[0][0]
    state = jax.tree_util.tree_map_with_path(lambda p, v: np.full_like(v, np.nan) if p == first else v, state)
    (tmp_path / "bad.msgpack").write_bytes(flax.serialization.msgpack_serialize(state))
    (tmp_path / "bad.json").write_text(open(os.path.join(WEIGHTS_DIR, "digits.json")).read())
    with pytest.raises(ModelError, match="corrupt: parameter .* non-finite"):
        load_model(str(tmp_path / "bad.msgpack"))
    t = time.time()
    assert main(["likelihood", "--model", str(tmp_path / "bad.msgpack"), "--num", "4", "--no-progress"]) == 2
    assert "non-finite" in capsys.readouterr().err and time.time() - t < 30


# ---------------------------------------------------------------------------------------------------------
# 4. invalid steps / tolerances
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=-1), dict(steps=True), dict(steps=2.5),
                                 dict(rtol=float("inf")), dict(rtol=0.0), dict(max_steps=0)])
def test_invalid_steps_and_tolerances_are_refused(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"^{name}:"):
        dg.sample(SCORE, P, latents(), sampler=dg.HighDensity(0.5), **bad)
    with pytest.raises(ValueError, match=f"^{name}:"):
        dg.log_likelihood(SCORE, P, latents(), key=jax.random.key(0), **bad)


@pytest.mark.parametrize("argv", [["--steps", "-5"], ["--steps", "0"], ["--rtol", "0"], ["--batch-size", "0"]])
def test_cli_refuses_invalid_steps(argv, capsys):
    assert main(["likelihood", "--num", "2", "--no-progress"] + argv) == 2
    assert argv[0] in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# 5. guidance that leaves the data range is reported (both directions)
# ---------------------------------------------------------------------------------------------------------
def test_guidance_leaving_the_data_range_is_reported():
    # the mixture's data lie within about +-1.3; with data_range=1, strong downward guidance pushes samples out
    x = latents(32, 2, seed=1)
    run = jax.jit(lambda x, q: dg.sample(SCORE, P, x, sampler=dg.DensityGuidance(q), steps=20).x)
    plain, low = run(x, 0.5), run(x, 1e-3)  # one compiled program
    assert float(jnp.mean(jnp.abs(plain) > 1.05 * 1.5)) <= 0.01   # q = 0.5 stays inside [-1.5, 1.5]
    assert float(jnp.mean(jnp.abs(low) > 1.05 * 1.5)) > 0.01      # q = 1e-3 really leaves it
    checked = jax.jit(lambda x, q: dg.sample(SCORE, P, x, sampler=dg.DensityGuidance(q, data_range=1.5), steps=20).x)
    np.testing.assert_array_equal(checked(x, 0.5), plain)         # inside: unchanged, no error
    with pytest.raises(Exception, match="left the data range"):   # outside: a run-time error naming the cause
        checked(x, 1e-3)
    assert dg.load_model("digits").data_range == 1.0


@pytest.mark.slow
def test_cli_sample_default_rows_stay_in_range_and_low_q_is_reported(tmp_path, capsys):
    """Must show: `dgjax sample` with its defaults: every row inside the data range; q = 0.1 reported."""
    out = tmp_path / "s.png"
    assert main(["sample", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "leaves the data range" not in text and out.exists()
    assert main(["sample", "--q", "0.1", "0.5", "--out", str(tmp_path / "t.png"), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "0.1  leaves the data range" in text and "1 rows" in text


# ---------------------------------------------------------------------------------------------------------
# 6. outputs are checked for non-finite values, naming the stage
# ---------------------------------------------------------------------------------------------------------
def test_nan_outputs_are_errors_naming_the_stage():
    nan_score = lambda x, t: x * jnp.nan  # noqa: E731
    with pytest.raises(ValueError, match="dg.sample: the ODE solve of phase 1 of 1 \\(PFODE\\) produced non-finite"):
        dg.sample(nan_score, P, latents(), steps=4)
    with pytest.raises(ValueError, match="log_likelihood: the PF-ODE encoding solve produced non-finite"):
        dg.log_likelihood(SCORE, P, jnp.full((2, 2), 1e20), key=jax.random.key(0), steps=4)
    with pytest.raises(ValueError, match="logp_T contains non-finite"):
        dg.sample(SCORE, P, latents(), steps=2, track_logp=True, key=jax.random.key(0), logp_T=jnp.full((4,), jnp.nan))
    with pytest.raises(ValueError, match="means contains non-finite"):
        dg.GaussianMixture(jnp.array([1.0]), jnp.array([[jnp.nan, 0.0]]), jnp.array([0.1]))
    with pytest.raises(ValueError, match="lambda_min: must be a finite number"):
        dg.VP(lambda_min=-jnp.inf)
    with pytest.raises(ValueError, match="score_alignment: the tangent solve produced non-finite"):
        dg.score_alignment(nan_score, P, latents(), 0.5, steps=2)


def test_nan_output_under_jit_is_a_runtime_error_naming_the_stage():
    nan_score = lambda x, t: x * jnp.nan  # noqa: E731
    with pytest.raises(Exception, match="ODE solve of phase 1 of 1"):
        jax.jit(lambda x: dg.sample(nan_score, P, x, steps=4).x)(latents())


# ---------------------------------------------------------------------------------------------------------
# 7. an all-zero latent row
# ---------------------------------------------------------------------------------------------------------
def test_zero_latent_row_is_an_error_not_nan():
    x = latents().at[2].set(0.0)
    with pytest.raises(ValueError, match="x_T: some row is all zeros"):
        dg.sample(SCORE, P, x, sampler=dg.DensityGuidance(0.6), steps=4)
    with pytest.raises(ValueError, match="x_T: some row is all zeros"):
        dg.prior_guidance(P, x, 0.6)
    with pytest.raises(Exception, match="some row is all zeros"):
        jax.jit(lambda x: dg.prior_guidance(P, x, 0.6))(x)


# ---------------------------------------------------------------------------------------------------------
# 8 and 12. CLI: invalid options exit non-zero with a message; no output it did not produce
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,where", [
    (["sample", "--probes", "0"], "--probes"), (["sample", "--rtol", "0"], "--rtol"),
    (["sample", "--max-steps", "0"], "--max-steps"), (["sample", "--feasibility-tol", "-1"], "--feasibility-tol"),
    (["sample", "--out", "x.jpg"], "ending in .png"),
    (["likelihood", "--num", "0"], "--num"), (["align", "--num", "0"], "--num"),
    (["align", "--batch-size", "0"], "--batch-size"), (["demo", "--num-samples", "0"], "--num-samples"),
    (["likelihood", "--rtol", "0"], "--rtol"), (["align", "--steps", "-1"], "--steps"),
    (["train", "--lr", "nan"], "--lr"), (["sample", "--q", "0.5", "inf"], "--q"),
])
def test_cli_invalid_options_exit_2_without_traceback(argv, where, capsys, tmp_path):
    assert main(argv + ["--no-progress"] if argv[0] != "demo" else argv) == 2
    err = capsys.readouterr().err
    assert where in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_never_replaces_an_output_with_a_grey_grid(tmp_path, capsys):
    out = tmp_path / "samples.png"
    out.write_bytes(b"mine")
    # every row infeasible: nothing is written, exit 1
    assert main(["sample", "--q", "0.999", "--num", "2", "--steps", "4", "--out", str(out), "--no-progress"]) == 1
    assert out.read_bytes() == b"mine" and "was not written" in capsys.readouterr().out


def test_model_json_errors_are_clear(tmp_path, capsys):
    from dgjax.models import WEIGHTS_DIR

    cfg = json.load(open(os.path.join(WEIGHTS_DIR, "digits.json")))
    blob = open(os.path.join(WEIGHTS_DIR, "digits.msgpack"), "rb").read()
    for name, change, msg in [("shape", {"shape": "abc"}, "'shape' must be a list of positive integers"),
                              ("proc", {"process": dict(cfg["process"], beta=1.0)}, "unknown process field")]:
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(cfg, **change)))
        (tmp_path / f"{name}.msgpack").write_bytes(blob)
        with pytest.raises(ModelError, match=msg):
            load_model(str(tmp_path / f"{name}.msgpack"))
        assert main(["align", "--model", str(tmp_path / f"{name}.msgpack"), "--num", "2"]) == 2
        assert msg.split()[0] in capsys.readouterr().err


def test_train_divergence_is_reported_as_a_message(tmp_path, capsys):
    assert main(["train", "--data", "moons", "--arch", "mlp", "--width", "8", "--depth", "1", "--steps", "30",
                 "--lr", "1e6", "--warmup", "1", "--grad-clip", "1e9", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    assert "diverged" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# 9. low-precision x_T
# ---------------------------------------------------------------------------------------------------------
def test_bfloat16_latents_point_to_compute_dtype():
    with pytest.raises(ValueError, match="x_T has dtype bfloat16.*compute_dtype"):
        dg.sample(SCORE, P, latents().astype(jnp.bfloat16), steps=2)
    with pytest.raises(ValueError, match="x0 has dtype float16"):
        dg.log_likelihood(SCORE, P, latents().astype(jnp.float16), steps=2)


# ---------------------------------------------------------------------------------------------------------
# 11. traced t_start / t_end in the wrong order
# ---------------------------------------------------------------------------------------------------------
def test_reversed_traced_times_are_a_runtime_error():
    run = jax.jit(lambda x, a, b: dg.sample(SCORE, P, x, steps=2, t_start=a, t_end=b).x)
    np.testing.assert_allclose(run(latents(), 1.0, 0.0), dg.sample(SCORE, P, latents(), steps=2).x, rtol=1e-5)
    for a, b in ((0.2, 0.8), (0.5, 0.5)):
        with pytest.raises(Exception, match="t_end must be below t_start"):
            run(latents(), a, b)


# ---------------------------------------------------------------------------------------------------------
# 13. smaller argument checks
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,msg", [
    (lambda: dg.sample(SCORE, P, jnp.zeros((0, 2)), steps=2), "x_T has no rows"),
    (lambda: dg.DensityGuidance("0.5"), "q: must be a number"),
    (lambda: dg.DensityGuidance(None), "q: must be a number"),
    (lambda: dg.sample(SCORE, P, latents(), divergence="exact", track_logp=True), "divergence: expected"),
    (lambda: dg.sample(SCORE, "VP", latents()), "process: expected"),
    (lambda: dg.sample(SCORE, P, latents(), key=0, track_logp=True), "key: must be a PRNG key"),
    (lambda: dg.sample(SCORE, P, latents(), key=jax.random.split(jax.random.key(0), 4), track_logp=True),
     "key: must be a single PRNG key"),
    (lambda: dg.EDM(sigma_max=float("inf")), "sigma_max: must be a finite number"),
    (lambda: dg.VE(sigma_max=float("nan")), "sigma_max: must be a finite number"),
    (lambda: P.prior_sample(jax.random.key(0), (-1, 2)), "shape: must be"),
    (lambda: load_model(123), "load_model: expected"),
    (lambda: dg.bits_per_dim(jnp.zeros(3), ()), "shape: must be the per-sample event shape"),
    (lambda: dg.bits_per_dim(jnp.zeros(3), (0,)), "shape: must be the per-sample event shape"),
    (lambda: dg.bits_per_dim(jnp.zeros(3), (4, -2)), "shape: must be the per-sample event shape"),
])
def test_small_argument_errors_name_the_argument(call, msg):
    with pytest.raises((ValueError, ModelError), match=msg):
        call()


def test_numpy_integer_probe_count_is_accepted():
    assert dg.Hutchinson(np.int64(2)).num_probes == 2 and type(dg.Hutchinson(np.int64(2)).num_probes) is int
    with pytest.raises(ValueError, match="num_probes"):
        dg.Hutchinson(True)
