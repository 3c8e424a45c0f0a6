"""Sharding helpers on one device, and a real multi-process launch (2 processes x 2 virtual CPU devices, gloo
collectives) that matches one device. The 4-device equivalence tests of every sampler are in test_scale.py."""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg


def test_shard_batch_single_device():
    from dgjax.parallel import shard_batch

    x = shard_batch(jnp.ones((3, 2)))
    assert x.shape == (3, 2)
    with pytest.raises(ValueError, match="x"):
        shard_batch(jnp.float32(1.0))
    assert dg.shard_batch is shard_batch
    assert dg.batch_sharding().mesh.axis_names == ("batch",)


def test_sample_sharded_single_device_equals_sample():
    p = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 2, (4,))
    x_T = p.prior_sample(jax.random.key(1), (3, 4))
    kw = dict(key=jax.random.key(2), track_logp=True, steps=6)
    ref = dg.sample(gm.score(p), p, x_T, **kw)
    out = dg.sample_sharded(gm.score(p), p, x_T, **kw)
    np.testing.assert_allclose(out.x, ref.x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.logp, ref.logp, rtol=1e-5, atol=1e-4)


# The worked multi-host example of the README (section Scale), run for real on one machine.
MULTIHOST = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes only
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import numpy as np
    from jax.experimental import multihost_utils
    import dgjax as dg

    P = dg.VP()
    score = dg.random_mixture(jax.random.key(0), 3, (8,)).score(P)
    N = 8
    rows = dg.host_slice(N)                                       # this process's rows
    x_T = dg.host_local_batch(P.prior_sample(jax.random.key(1), (N, 8))[rows])   # global (N, 8) on 4 devices
    out = dg.sample_sharded(score, P, x_T, key=jax.random.key(2), track_logp=True, steps=32)
    logp = multihost_utils.process_allgather(out.logp, tiled=True)  # all N values on every process
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    assert rows == slice(4 * jax.process_index(), 4 * jax.process_index() + 4)
    ref = dg.sample(score, P, P.prior_sample(jax.random.key(1), (N, 8)), key=jax.random.key(2), track_logp=True,
                    steps=32)
    np.testing.assert_allclose(logp, ref.logp, rtol=1e-5, atol=1e-4)
    print("OK", jax.process_index())
""")


@pytest.mark.slow
def test_two_processes_match_one_device():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", MULTIHOST, f"localhost:{port}", str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"OK {i}" in out, err[-3000:]
