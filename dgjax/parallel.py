"""Data parallelism: place a batch across all local devices (``jax.sharding``).

Samplers act per sample, so a batch sharded on its leading axis runs data-parallel under ``jax.jit`` with
no other change (XLA's SPMD partitioner splits every batched op; the adaptive step-size controller's
error norm is a global reduction, so the step sequence -- and the result -- is the same as on one device).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def batch_sharding(devices=None) -> NamedSharding:
    """A sharding that splits the leading (batch) axis over ``devices`` (default: all local devices)."""
    devices = jax.local_devices() if devices is None else list(devices)
    return NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))


def shard_batch(x, devices=None):
    """Place ``x`` (N, *shape) with its batch axis split across ``devices``; N must divide evenly."""
    sharding = batch_sharding(devices)
    n_dev = sharding.mesh.size
    if x.ndim < 1 or x.shape[0] % n_dev:
        raise ValueError(f"x: the batch size {x.shape[0] if x.ndim else None} must be a multiple of the number of "
                         f"devices ({n_dev}); pad the batch or pass devices=")
    return jax.device_put(x, sharding)


def sample_sharded(score: Callable, process, x_T, *, devices=None, **kwargs):
    """``dg.sample`` with x_T sharded across devices, jit-compiled; same keyword arguments as ``dg.sample``.
    Returns a ``dg.Sample`` whose arrays stay sharded on the batch axis."""
    from .samplers import sample

    x_T = shard_batch(x_T, devices)
    key = kwargs.pop("key", None)
    return jax.jit(lambda x, k: sample(score, process, x, key=k, **kwargs))(x_T, key)
