"""Shared fixtures. ``x64``: run a test in float64 (``jax.enable_x64`` as a context, so other tests keep
the float32 default); ``held_out_loss``: a training loss on fixed examples, noise levels and noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgjax.processes import PROCESSES

# every registered process at its defaults, but VPSDE (whose defaults make the VPLinear before it)
PROCESS_IDS = [name for name in PROCESSES if name != "VPSDE"]
ALL_PROCESSES = [PROCESSES[name]() for name in PROCESS_IDS]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=ALL_PROCESSES, ids=PROCESS_IDS)
def process(request):
    return request.param


@pytest.fixture
def held_out_loss():
    """``make(cfg, net, ds, n) -> loss(params)``: the training loss (``make_loss_fn``) of ``params`` on ``n`` test
    examples, averaged over 4 fixed keys (noise levels and noise): a deterministic before/after comparison."""
    from dgjax.training import make_loss_fn

    def make(cfg, net, ds, n):
        loss_fn = jax.jit(make_loss_fn(cfg, net, ds.dim))
        x, hist = jnp.asarray(ds.split("test", n)), jnp.ones(cfg.num_bins)
        return lambda params: float(np.mean([loss_fn(params, hist, x, jax.random.key(k))[0] for k in range(4)]))

    return make
