"""Scale (issue 8): data parallelism over devices, compile-once sweeps, mixed precision, memory.

Device tests run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the device
count is fixed when JAX starts); their reference is the same program on one device (``devices=`` the first
device) or plain ``dg.sample`` / ``dg.log_likelihood`` / ``dg.score_alignment``, with the same keys, and the
likelihood is also checked against the oracle's exact log-density.
"""

import contextlib
import itertools
import os
import subprocess
import sys
import textwrap

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg

VP = dg.VP()

PRELUDE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import dgjax as dg
    assert len(jax.devices()) == 4, jax.devices()
    P = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 3, (8,))
    score = gm.score(P)
    x_T = P.prior_sample(jax.random.key(1), (8, 8))
    key = jax.random.key(2)

    def close(a, b, what):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4, err_msg=what)

    def agree(run, x, what, ndev=4, fine=None):
        # run(devices, x) -> dict of arrays, on ndev devices vs one device, for the same keys. Float tolerance,
        # measured: the largest change that moving every entry of x by one ulp (up, and down) makes on one device (the
        # float32 rounding sensitivity of the whole solve; one direction alone is a single draw of it, which a
        # reassociated multi-device program exceeded by 1.2x), floored at 1e-5. Adaptive solves (fine = the same run at
        # rtol = atol = 1e-7): the controller picks the steps from the whole batch, but a rounding-level difference in
        # its error norm can flip one accept/reject decision, after which two runs agree within their solver error: the
        # tolerance is then 2 x the one-device run's measured error against `fine`.
        one, many = run(jax.devices()[:1], x), run(jax.devices()[:ndev], x)
        nudged = [run(jax.devices()[:1], jnp.nextafter(x, jnp.asarray(v, x.dtype))) for v in (jnp.inf, -jnp.inf)]
        ref = None if fine is None else fine(jax.devices()[:1], x)
        for k in one:
            if k in ("nfe", "steps"):
                continue
            a, b = np.asarray(one[k]), np.asarray(many[k])
            tol = max(max(float(np.max(np.abs(np.asarray(c[k]) - a))) for c in nudged), 1e-5)
            if ref is not None:
                tol = max(tol, 2 * float(np.max(np.abs(np.asarray(ref[k]) - a))))
            err = float(np.max(np.abs(b - a)))
            assert err <= tol, f"{what} {k}: {ndev} devices differ from 1 by {err:.2e} > {tol:.2e}"
        return one, many

    def check_sample(kw, what, ndev=4):
        def run(devices, x, **over):
            out = dg.sample_sharded(score, P, x, key=key, devices=devices, **{**kw, **over})
            assert len(out.x.sharding.device_set) == len(devices), out.x.sharding
            return dict(x=out.x, logp=out.logp, nfe=out.nfe, steps=out.num_steps)
        adaptive = "steps" not in kw
        fine = (lambda d, x: run(d, x, rtol=1e-7, atol=1e-7)) if adaptive else None
        one, many = agree(run, x_T, what, ndev, fine)
        if not adaptive:
            assert int(one["nfe"]) == int(many["nfe"]), what
        # the samplers differ: guard against a comparison that cannot fail (e.g. both returning x_T)
        assert float(jnp.max(jnp.abs(one["x"] - x_T))) > 0.1, what
""")


def _run_devices(body: str):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body) + "\nprint('OK')\n"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


# ------------------------------------------------------------------------------------------------------
# 4 devices == 1 device
# ------------------------------------------------------------------------------------------------------
def test_four_devices_match_one_pfode_and_density_guidance():
    _run_devices("""
        check_sample(dict(track_logp=True, steps=32), "PFODE")
        check_sample(dict(sampler=dg.DensityGuidance(0.4), track_logp=True, steps=16), "DensityGuidance")
    """)


def test_four_devices_match_one_reverse_sde_and_padding():
    """ReverseSDE (Brownian increments drawn per device) equals one device; an uneven batch raises by default
    and with pad=True is padded, run on the same compiled program, trimmed, and equal to the unpadded run."""
    _run_devices("""
        kw = dict(sampler=dg.ReverseSDE(), track_logp=True, steps=32)
        check_sample(kw, "ReverseSDE")
        x6 = x_T[:6]
        try:
            dg.sample_sharded(score, P, x6, key=key, **kw)
        except ValueError as e:
            assert "x_T: the batch size 6 is not a multiple of the number of devices (4)" in str(e)
            assert "pad=True" in str(e)
        else:
            raise AssertionError("no error for a batch of 6 on 4 devices")
        ref = dg.sample(score, P, x6, key=key, **kw)
        out = dg.sample_sharded(score, P, x6, key=key, pad=True, **kw)
        assert out.x.shape == (6, 8) and out.logp.shape == (6,) and out.logp_T.shape == (6,)
        close(out.x, ref.x, "padded x")
        close(out.logp, ref.logp, "padded logp")
        # a per-sample q is padded along with the batch
        q = jnp.linspace(0.3, 0.52, 6)  # upward q feasible for D = 8 (docs/math.md 5)
        ref = dg.sample(score, P, x6, sampler=dg.DensityGuidance(q), steps=8)
        out = dg.sample_sharded(score, P, x6, sampler=dg.DensityGuidance(q), steps=8, pad=True)
        close(out.x, ref.x, "padded per-sample q")
    """)


def test_four_devices_match_one_likelihood_and_alignment():
    _run_devices("""
        x0 = gm.sample(jax.random.key(3), 8)
        def run(devices, x, **kw):
            out = dg.log_likelihood_sharded(score, P, x, key=key, devices=devices, **kw)
            assert len(out.logp.sharding.device_set) == len(devices)
            return dict(logp=out.logp, x_T=out.x_T)
        agree(lambda d, x: run(d, x, steps=32), x0, "log_likelihood")
        # with the exact divergence it is the oracle's log-density (not only the same number twice)
        lp = gm.log_prob(P)
        out = dg.log_likelihood_sharded(score, P, x0, divergence=dg.Exact(), rtol=1e-5, atol=1e-5,
                                        prior_log_prob=lambda x: lp(x, P.t_max))
        np.testing.assert_allclose(out.logp, lp(x0, P.t_min), atol=5e-3)
        ref = dg.score_alignment(score, P, x_T, 0.3, steps=16, return_details=True)     # one device, unsharded
        out = dg.score_alignment_sharded(score, P, x_T[:7], 0.3, steps=16, return_details=True, pad=True)
        close(out.value, ref.value[:7], "alignment")  # constant steps: no controller to amplify rounding
        assert out.value.shape == (7,) and float(out.aligned_fraction) == float(jnp.mean(ref.value[:7] > 0))
    """)


@pytest.mark.slow
def test_device_count_independence_adaptive_and_other_samplers():
    """Adaptive PF-ODE and log_likelihood (within solver error, see agree), HighDensity and
    StochasticDensityGuidance on 4 devices, PFODE on 2 devices, equal one device."""
    _run_devices("""
        check_sample(dict(track_logp=True, rtol=1e-4, atol=1e-4), "PFODE adaptive")
        x0 = gm.sample(jax.random.key(3), 8)
        def run(devices, x, **kw):
            out = dg.log_likelihood_sharded(score, P, x, key=key, devices=devices, **kw)
            return dict(logp=out.logp, x_T=out.x_T)
        agree(lambda d, x: run(d, x, rtol=1e-4, atol=1e-4), x0, "log_likelihood adaptive",
              fine=lambda d, x: run(d, x, rtol=1e-7, atol=1e-7))
        check_sample(dict(sampler=dg.HighDensity(0.4), track_logp=True, steps=16), "HighDensity")
        noise = dg.noise_window(0.5, 0.3, 0.7)
        check_sample(dict(sampler=dg.StochasticDensityGuidance(0.5, noise), track_logp=True, steps=32), "DG-SDE")
        check_sample(dict(track_logp=True, steps=32), "PFODE on 2 devices", ndev=2)
    """)


# ------------------------------------------------------------------------------------------------------
# compile once
# ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def count_compiles():
    """Record the name of every XLA compilation (jax.monitoring 'backend_compile' events)."""
    names = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kw.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _sweep(make_sampler, values, **kw):
    """Run dg.sample_sharded over the values; returns (outputs, compiles of the first, compiles of the rest)."""
    mix = dg.random_mixture(jax.random.key(50), 2, (32,))
    score = mix.score(VP)
    x_T = VP.prior_sample(jax.random.key(51), (4, 32))
    outs = []
    with count_compiles() as first:
        outs.append(dg.sample_sharded(score, VP, x_T, sampler=make_sampler(values[0]), key=jax.random.key(52), **kw))
    with count_compiles() as rest:
        for v in values[1:]:
            outs.append(dg.sample_sharded(score, VP, x_T, sampler=make_sampler(v), key=jax.random.key(52), **kw))
        jax.block_until_ready(outs)
    return (mix, score, x_T), outs, first, rest


def test_q_sweep_of_seven_values_compiles_once():
    qs = [0.2, 0.3, 0.4, 0.45, 0.5, 0.53, 0.56]  # feasible upward: Phi^-1(q) < sqrt(D/2)/20 (docs/math.md 5)
    (mix, score, x_T), outs, first, rest = _sweep(dg.DensityGuidance, qs, track_logp=True, steps=12)
    assert first.count("jit(_sample_program)") == 1, first
    assert rest == [], rest  # the other six values compile nothing at all
    logps = [float(jnp.mean(o.logp)) for o in outs]
    assert all(b > a for a, b in itertools.pairwise(logps)), logps  # q took effect: log p rises with q
    ref = dg.sample(score, VP, x_T, sampler=dg.DensityGuidance(qs[3]), key=jax.random.key(52), track_logp=True,
                    steps=12)
    np.testing.assert_allclose(outs[3].logp, ref.logp, rtol=1e-5, atol=1e-4)


def test_t_switch_sweep_compiles_once_and_matches_eager():
    ts = [0.1, 0.37, 0.6, 0.95]  # 0.95: phase one shorter than half a step -> rounded to 1 step, as eagerly
    (mix, score, x_T), outs, first, rest = _sweep(dg.HighDensity, ts, track_logp=True, steps=10)
    assert first.count("jit(_sample_program)") == 1 and rest == [], (first, rest)
    for t_switch, out in list(zip(ts, outs, strict=True))[1::2]:  # the traced switch gives the eager (concrete) result
        ref = dg.sample(score, VP, x_T, sampler=dg.HighDensity(t_switch), key=jax.random.key(52), track_logp=True,
                        steps=10)
        np.testing.assert_allclose(out.x, ref.x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.logp, ref.logp, rtol=1e-5, atol=1e-4)
        assert int(out.nfe) == int(ref.nfe)



def test_noise_level_sweep_compiles_once():
    levels = [0.0, 0.3, 0.6]
    make = lambda lv: dg.StochasticDensityGuidance(0.5, dg.noise_window(lv, 0.2, 0.8))  # noqa: E731
    (mix, score, x_T), outs, first, rest = _sweep(make, levels, steps=16)
    assert first.count("jit(_sample_program)") == 1 and rest == [], (first, rest)
    assert float(jnp.max(jnp.abs(outs[1].x - outs[0].x))) > 1e-3  # the level took effect
    ref = dg.sample(score, VP, x_T, sampler=make(0.6), key=jax.random.key(52), steps=16)
    np.testing.assert_allclose(outs[2].x, ref.x, rtol=1e-5, atol=1e-5)


def test_traced_high_density_edge_cases_match_eager():
    """A traced t_switch at the ends of the span (zero-length phases) gives the concrete layout's result."""
    mix = dg.random_mixture(jax.random.key(53), 2, (4,))
    score = mix.score(VP)
    x_T = VP.prior_sample(jax.random.key(54), (3, 4))
    run = jax.jit(lambda ts: dg.sample(score, VP, x_T, sampler=dg.HighDensity(ts), steps=8).x)
    for t_switch in (VP.t_min, VP.t_max):
        ref = dg.sample(score, VP, x_T, sampler=dg.HighDensity(t_switch), steps=8).x
        np.testing.assert_allclose(run(jnp.float32(t_switch)), ref, rtol=1e-5, atol=1e-5)
    # a switch at t_max is the pure high-density ODE: continuous in t_switch (it was the PF-ODE once,
    # when the vector field looked its phase up in a list that changed length once the leaves were traced)
    near = dg.sample(score, VP, x_T, sampler=dg.HighDensity(VP.t_max - 1e-4), steps=8).x
    at = dg.sample(score, VP, x_T, sampler=dg.HighDensity(VP.t_max), steps=8).x
    pf = dg.sample(score, VP, x_T, sampler=dg.PFODE(), steps=8).x
    np.testing.assert_allclose(at, near, atol=1e-3)
    assert float(jnp.max(jnp.abs(at - pf))) > 0.1
    with pytest.raises(Exception, match="t_switch must lie in"):
        jax.block_until_ready(run(jnp.float32(1.5)))


# ------------------------------------------------------------------------------------------------------
# host slices (multi-host), argument errors
# ------------------------------------------------------------------------------------------------------
def test_host_slice():
    assert dg.host_slice(12, process_index=0, process_count=3) == slice(0, 4)
    assert dg.host_slice(12, process_index=2, process_count=3) == slice(8, 12)
    rows = np.concatenate([np.arange(12)[dg.host_slice(12, process_index=i, process_count=3)] for i in range(3)])
    np.testing.assert_array_equal(rows, np.arange(12))  # the slices tile the batch in process order
    assert dg.host_slice(5) == slice(0, 5)  # one process owns everything
    with pytest.raises(ValueError, match="n_global: 10 rows do not split evenly over 3 processes"):
        dg.host_slice(10, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        dg.host_slice(12, process_index=3, process_count=3)
    x = dg.host_local_batch(np.ones((4, 2), np.float32))  # one process: the global batch is its rows
    assert x.shape == (4, 2)


def test_pad_batch_and_errors():
    x = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(dg.pad_batch(x, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    with pytest.raises(ValueError, match="n_to"):
        dg.pad_batch(x, 2)
    with pytest.raises(ValueError, match="x: must have a leading batch axis"):
        dg.shard_batch(jnp.float32(1.0))
    with pytest.raises(ValueError, match="devices"):
        dg.shard_batch(x, devices=[])
    with pytest.raises(ValueError, match="t_end must be a concrete number"):
        dg.score_alignment_sharded(dg.random_mixture(jax.random.key(0), 2, (2,)).score(VP), VP, x, jnp.float32(0.3),
                                   steps=2)


# ------------------------------------------------------------------------------------------------------
# memory: no per-step storage without gradients
# ------------------------------------------------------------------------------------------------------
def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("what", ["pfode_tracked", "dg_sde_tracked", "alignment_score_free"])
def test_memory_does_not_grow_with_steps(what):
    """Forward solves (no gradient) hold O(state) memory: the compiled program's scratch memory is the same
    for 8 and 64 steps (per-step activations of the Hutchinson JVPs / tangent are not stored), while
    reverse-mode differentiation through the same solve does store per-step checkpoints (the control). The
    one exception is exact: a fixed-step SDE's Brownian path holds one PRNG key per step (8 bytes each,
    ``dgjax/sampling/brownian.py``)."""
    mix = dg.random_mixture(jax.random.key(60), 2, (32,))
    score = mix.score(VP)
    x_T = VP.prior_sample(jax.random.key(61), (16, 32))
    key = jax.random.key(62)

    def make(steps):
        if what == "pfode_tracked":
            return lambda x: dg.sample(score, VP, x, key=key, track_logp=True, steps=steps).logp
        if what == "dg_sde_tracked":
            smp = dg.StochasticDensityGuidance(0.5, dg.noise_window(0.3, 0.2, 0.8))
            return lambda x: dg.sample(score, VP, x, sampler=smp, key=key, track_logp=True, steps=steps).logp
        return lambda x: dg.score_alignment(score, VP, x, 0.3, key=key, score_free=True, steps=steps,
                                            solver=dfx.Euler())

    few, many = _temp_bytes(make(8), x_T), _temp_bytes(make(64), x_T)
    key_bytes = lambda n: jax.random.key_data(jax.random.split(key, n)).nbytes  # noqa: E731
    step_keys = key_bytes(64) - key_bytes(8) if what == "dg_sde_tracked" else 0
    assert many - few == step_keys, (few, many, step_keys)


@pytest.mark.slow
def test_memory_grows_with_steps_under_gradients():
    """The control for the test above: reverse-mode through the solve (diffrax's recursive checkpointing)
    does hold per-step checkpoints, and the same measurement sees them."""
    mix = dg.random_mixture(jax.random.key(60), 2, (32,))
    score = mix.score(VP)
    x_T = VP.prior_sample(jax.random.key(61), (16, 32))

    def grad_of(steps):
        f = lambda z: jnp.sum(dg.sample(score, VP, z, key=jax.random.key(62), track_logp=True, steps=steps).logp)  # noqa: E731
        return jax.grad(f)

    assert _temp_bytes(grad_of(64), x_T) > _temp_bytes(grad_of(8), x_T)


# ------------------------------------------------------------------------------------------------------
# mixed precision on the shipped model
# ------------------------------------------------------------------------------------------------------
BF16_TOL_MAX = 0.03   # nats/dim, any single sample
BF16_TOL_MEAN = 0.01  # nats/dim, batch mean (= 0.014 bits/dim, the held-out bits/dim standard error)


def test_bfloat16_compute_dtype_keeps_solver_state_float32():
    """compute_dtype=bfloat16: the network computes in bf16, the score it hands the solver is float32 (and
    float64 under x64), and its eps prediction is within bf16 rounding of the float32 network's."""
    m32 = dg.load_model("digits")
    m16 = dg.load_model("digits", compute_dtype=jnp.bfloat16)
    assert m32.compute_dtype == jnp.float32 and m16.compute_dtype == jnp.bfloat16
    assert m16.with_compute_dtype(jnp.float32).compute_dtype == jnp.float32
    with pytest.raises(dg.ModelError, match="compute_dtype"):
        m32.with_compute_dtype(jnp.int32)
    x = m32.prior_sample(jax.random.key(0), 4)
    lam = jnp.zeros((4,))
    e16, e32, s16 = jax.jit(lambda x: (m16.network.apply({"params": m16.params}, x, lam),
                                       m32.network.apply({"params": m32.params}, x, lam), m16.score(x, 0.5)))(x)
    assert e16.dtype == jnp.bfloat16 and e32.dtype == jnp.float32
    assert s16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(e16.astype(jnp.float32) - e32) / jnp.linalg.norm(e32))
    assert 0 < rel < 0.05, rel  # bf16 rounding (2^-8 per op) accumulated over ~20 layers, not a different net


@pytest.mark.slow
def test_bfloat16_network_changes_log_likelihood_within_tolerance():
    """The digits UNet in bfloat16 (solver state and log-density in float32): PF-ODE log-likelihood of 32
    held-out digits moves by < BF16_TOL_MAX nats/dim per sample and < BF16_TOL_MEAN on average."""
    m32 = dg.load_model("digits")
    m16 = dg.load_model("digits", compute_dtype=jnp.bfloat16)
    x0 = jnp.asarray(m32.dataset.split("test", n=32, seed=0))

    @jax.jit
    def both(x, key):
        kw = dict(key=key, steps=20)
        return (dg.log_likelihood(m32.score, m32.process, x, **kw), dg.log_likelihood(m16.score, m16.process, x, **kw))

    l32, l16 = both(x0, jax.random.key(0))
    for a in (l16.logp, l16.x_T, l16.logp_T):
        assert a.dtype == jnp.float32
    dev = np.abs(np.asarray(l16.logp) - np.asarray(l32.logp)) / m32.dim
    assert dev.max() < BF16_TOL_MAX and dev.mean() < BF16_TOL_MEAN, dev
    assert dev.max() > 0  # bfloat16 really was used (the f32 and bf16 programs differ)
    bpd32 = dg.bits_per_dim(l32.logp, m32.shape, m32.dataset.offset_bits)
    assert 1.0 < float(jnp.mean(bpd32)) < 3.0  # a sane likelihood to compare against (held-out: 2.0 bits/dim)
