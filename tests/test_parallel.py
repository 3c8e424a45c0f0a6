"""Sharding the batch across devices gives the same result as one device (run in a subprocess with 4 virtual
CPU devices, since the device count is fixed when JAX starts)."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

import dgjax as dg

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import dgjax as dg
    from dgjax.parallel import sample_sharded, shard_batch
    assert len(jax.devices()) == 4
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 3, (16,))
    score = gm.score(p)
    x_T = p.prior_sample(jax.random.key(1), (8, 16))
    kw = dict(key=jax.random.key(2), track_logp=True, rtol=1e-4, atol=1e-4)
    ref = dg.sample(score, p, x_T, **kw)
    out = sample_sharded(score, p, x_T, **kw)
    assert len(out.x.sharding.device_set) == 4, out.x.sharding
    np.testing.assert_allclose(out.x, ref.x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.logp, ref.logp, rtol=1e-5, atol=1e-4)
    assert int(out.nfe) == int(ref.nfe)
    try:
        shard_batch(jnp.zeros((6, 2)))
    except ValueError as e:
        assert "multiple of the number of devices" in str(e)
    else:
        raise AssertionError("no error for an uneven batch")
    print("OK")
""")


def test_sharded_sampling_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_shard_batch_single_device():
    from dgjax.parallel import shard_batch

    x = shard_batch(jnp.ones((3, 2)))
    assert x.shape == (3, 2)
    with pytest.raises(ValueError, match="x"):
        shard_batch(jnp.float32(1.0))
    assert dg.shard_batch is shard_batch
