"""Data parallelism: a batch spread over every device (``jax.sharding``), one compiled program per sweep.

Samplers, ``dg.log_likelihood`` and ``dg.score_alignment`` act per sample, so a batch whose leading axis is
sharded over a one-axis ``Mesh`` (``NamedSharding(mesh, PartitionSpec("batch"))``) runs data-parallel under
``jax.jit`` with no other change: XLA's SPMD partitioner gives every device its rows, and the only
cross-device traffic is the adaptive controller's error norm (a global reduction per step). Hence:

* Errors as on one device. Every run-time check (infeasible guidance, leaving the data range, a mode
  bifurcation, a failed linear solve, a NaN score, an exhausted step budget) raises at once on every device
  and process (``_checks.check_value`` sees the program's device mesh at trace time and raises from every
  device, where ``equinox.error_if`` would raise on device 0 only and leave the others waiting in the next
  collective until XLA aborts the process). The entry points below raise the typed error
  (``dgjax.errors``); under your own ``jax.jit`` (the only multi-device route of ``dg.denoise``,
  ``dg.elbo`` and ``dg.forward_sde_logp``) wrap the call in ``dg.errors.typed_errors()`` to get the class.

* Same result on any device count. The step sequence is chosen from the whole batch, exactly as on one
  device, and every random draw is a function of (key, global row): Hutchinson probes come from
  ``split(key, N)`` (one key per sample) and Brownian increments from draws of shape (N, *shape); with
  ``jax_threefry_partitionable`` (the default since JAX 0.5) each device generates its own rows of these
  without communication, and the values do not depend on how the rows are split. These per-device PRNG
  streams are also *prefix-stable*: row i of a batch of N equals row i of a batch of N' > N, which is
  what makes padding exact (below). Results agree with one device to float rounding (each device's
  kernels round differently); with an adaptive controller a rounding-level change of the error norm can
  flip one accept/reject decision, and the results then agree within the solver's error. Tested with 4
  virtual CPU devices. The score's input and output are pinned to the batch sharding
  (``_batch_constrained``): otherwise XLA may keep the solver loop's state replicated and run the network
  on the whole batch on every device.
* Compile once. The entry points below jit-compile through ``equinox.filter_jit``: arrays in the
  arguments are traced, everything else (the score function, the process, solver, step count, flags) is
  static and keys the compilation cache. Samplers keep their tunable numbers as array leaves -- q of
  ``DensityGuidance``/``StochasticDensityGuidance``, ``HighDensity``'s t_switch, the level and bounds of
  ``dg.noise_window``/``dg.noise_window_log_snr`` -- so a sweep over them reuses one program. Pass the
  *same* score function object each call (a new closure is a new static argument: a recompile).
* Uneven batches. By default a batch size that is not a multiple of the device count raises a
  ``ValueError`` naming the fix. With ``pad=True`` the batch is padded to the next multiple with copies of
  its last sample and every per-sample output is trimmed back to N (so is any per-sample argument:
  ``logp_T``, ``w_T``, and the sampler's per-sample parameters, ``sampler.per_sample()``, e.g. a per-sample
  q, which are also sharded with the batch). With constant ``steps`` the padded result equals the unpadded one
  exactly (the prefix-stable streams above); with an adaptive controller the copies enter the error norm,
  so the step sequence -- and the result -- may differ within the solver tolerance.
* Multi-host. Every process runs the same program (``jax.distributed.initialize()`` first). Either every
  process builds the same global batch (e.g. from one key) and ``shard_batch`` keeps each process's rows,
  or each process builds only its rows, ``x[host_slice(N)]``, and ``host_local_batch`` assembles the
  global array. ``devices`` defaults to ``jax.devices()`` (all devices of all processes). README, Scale,
  has a worked launch.

Memory: no extra per-step storage (see README, Scale, for the measured peak memory per sample of each
sampler): without gradients every solve is a while loop over its state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._checks import all_finite, check_samples, deferred_errors, raise_if_not_finite
from .errors import InvalidArgument, typed_errors
from .sampling.base import AbstractSampler

__all__ = ["batch_sharding", "shard_batch", "pad_batch", "host_slice", "host_local_batch", "sample_sharded",
           "log_likelihood_sharded", "score_alignment_sharded"]


def _devices(devices) -> list:
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise InvalidArgument("devices: an empty device list; pass None (all devices) or a list of jax devices")
    return devices


def batch_sharding(devices: Sequence | None = None) -> NamedSharding:
    """A sharding that splits the leading (batch) axis over ``devices`` (default ``jax.devices()``: every
    device of every process; on one host, all local devices). Mesh axis name: ``"batch"``."""
    return NamedSharding(Mesh(np.array(_devices(devices)), ("batch",)), PartitionSpec("batch"))


def _check_divisible(n: int, n_dev: int, name: str) -> None:
    if n % n_dev:
        raise InvalidArgument(f"{name}: the batch size {n} is not a multiple of the number of devices ({n_dev}); "
                         f"pass pad=True (pads with copies of the last sample and trims every per-sample "
                         f"output back to {n}), use a batch of a multiple of {n_dev}, or pass devices=")


def pad_batch(x, n_to: int):
    """Pad ``x`` (N, ...) to ``n_to`` rows with copies of its last row (a real sample, so no NaN or
    infeasible path can come from the padding)."""
    x = jnp.asarray(x)
    n = x.shape[0]
    if n_to < n:
        raise InvalidArgument(f"n_to: cannot pad {n} rows down to {n_to}")
    if n_to == n:
        return x
    return jnp.concatenate([x, jnp.broadcast_to(x[-1:], (n_to - n,) + x.shape[1:])], axis=0)


def map_chunks(fn: Callable, x, batch: int, key, *extra, pad: bool = False, fold: str = "offset",
               on_chunk: Callable | None = None) -> Any:
    """Apply ``fn(x_chunk, *extra, key_chunk) -> array or tuple of (n, ...) arrays`` over chunks of ``batch``
    rows of ``x`` and concatenate the results as numpy arrays (a tuple when ``fn`` returns one).

    key_chunk = ``fold_in(key, offset)`` (``fold="offset"``: the chunk's first row) or ``fold_in(key, i)``
    (``fold="index"``: its index). ``pad=True`` pads the last chunk to ``batch`` rows (``pad_batch``), so
    every call has one shape and one compiled program; padded rows are dropped. ``on_chunk()`` runs after
    each chunk (e.g. a progress bar)."""
    outs: list[tuple[np.ndarray, ...]] = []
    for i, lo in enumerate(range(0, len(x), batch)):
        chunk = jnp.asarray(x[lo:lo + batch])
        m = chunk.shape[0]
        res = fn(pad_batch(chunk, batch) if pad else chunk, *extra,
                 jax.random.fold_in(key, lo if fold == "offset" else i))
        res = res if isinstance(res, tuple) else (res,)
        outs.append(tuple(np.asarray(r)[:m] for r in res))
        if on_chunk is not None:
            on_chunk()
    cat = tuple(np.concatenate([o[j] for o in outs]) for j in range(len(outs[0])))
    return cat[0] if len(cat) == 1 else cat


def shard_batch(x, devices: Sequence | None = None, *, pad: bool = False, name: str = "x"):
    """Place ``x`` (N, *shape) with its batch axis split across ``devices`` (default ``jax.devices()``).

    N must be a multiple of the device count, or ``pad=True`` pads it (``pad_batch``) to the next multiple.
    On several processes, pass the same global ``x`` on every process (each keeps its own rows), or build
    the global array from per-process rows with ``host_local_batch``. An ``x`` that already has this
    sharding is returned unchanged.
    """
    sharding = batch_sharding(devices)
    n_dev = sharding.mesh.size
    if getattr(x, "ndim", np.ndim(x)) < 1:
        raise InvalidArgument(f"{name}: must have a leading batch axis, shape (N, *shape); got a scalar")
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # a global multi-process array
        _check_divisible(x.shape[0], n_dev, name)
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    n = x.shape[0]
    if pad:
        x = pad_batch(x, -(-n // n_dev) * n_dev)
    _check_divisible(x.shape[0], n_dev, name)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    x_host = np.asarray(x)  # every process holds the same global x: keep the addressable rows
    return jax.make_array_from_callback(x_host.shape, sharding, lambda idx: x_host[idx])


def host_slice(n_global: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """The rows of a global batch of ``n_global`` that this process owns (contiguous, in process order).

    ``n_global`` must split evenly over the processes (and, for sharding, over all devices); defaults
    ``jax.process_index()`` and ``jax.process_count()``. With the slice each process builds only its rows
    (``x[host_slice(N)]``, or draws them from ``jax.random.fold_in(key, jax.process_index())``) and ``host_local_batch``
    assembles the global batch.
    """
    idx = jax.process_index() if process_index is None else int(process_index)
    cnt = jax.process_count() if process_count is None else int(process_count)
    if not (isinstance(n_global, (int, np.integer)) and n_global >= 1):
        raise InvalidArgument(f"n_global: must be a positive integer; got {n_global!r}")
    if not 0 <= idx < cnt:
        raise InvalidArgument(f"process_index: must lie in [0, {cnt}); got {idx}")
    if n_global % cnt:
        raise InvalidArgument(f"n_global: {n_global} rows do not split evenly over {cnt} processes; use a multiple of "
                         f"{cnt} (and of the total device count, for shard_batch)")
    n_local = n_global // cnt
    return slice(idx * n_local, (idx + 1) * n_local)


def host_local_batch(x_local, devices: Sequence | None = None):
    """The global batch-sharded array from each process's own rows ``x_local`` (n_local, *shape):
    ``jax.make_array_from_process_local_data``; global N = n_local * process_count (process order)."""
    sharding = batch_sharding(devices)
    x_local = np.asarray(x_local)
    n_global = x_local.shape[0] * jax.process_count()
    return jax.make_array_from_process_local_data(sharding, x_local, (n_global,) + x_local.shape[1:])


# ------------------------------------------------------------------------------------------------------
# the compiled programs: arrays traced, everything else static (equinox.filter_jit)
# ------------------------------------------------------------------------------------------------------
def _batch_constrained(score: Callable, sharding: NamedSharding) -> Callable:
    """``score`` with its input and output pinned to the batch sharding. Without the pin, XLA's sharding
    propagation through the solver's while loop may settle on a replicated loop state and run the network
    on the whole batch on every device (measured: an all-gather of x, then full-batch convolutions);
    ``with_sharding_constraint`` also applies to the JVP tangents (Hutchinson probes, alignment tangent)."""

    def constrained(x, t):
        x = jax.lax.with_sharding_constraint(x, sharding)
        return jax.lax.with_sharding_constraint(score(x, t), sharding)

    return constrained


@eqx.filter_jit
def _sample_program(score, process, x_T, options, sharding):
    from .sampling.sample import sample

    x_T = jax.lax.with_sharding_constraint(x_T, sharding)
    out = sample(_batch_constrained(score, sharding), process, x_T, **options)
    return out, all_finite(out)


@eqx.filter_jit
def _likelihood_program(score, process, x0, options, sharding):
    from .likelihood import log_likelihood

    out = log_likelihood(_batch_constrained(score, sharding), process, x0, **options)
    return out, all_finite(out)


@eqx.filter_jit
def _alignment_program(score, process, x_T, t_end, options, sharding):
    from .alignment import score_alignment

    out = score_alignment(_batch_constrained(score, sharding), process, x_T, t_end, **options)
    return out, all_finite(out)


def _prepare(x, devices, pad: bool, name: str):
    """(x sharded (and padded), N, padded N); x is checked here, where its values are concrete."""
    if not isinstance(x, jax.core.Tracer):
        check_samples(jnp.asarray(x) if not isinstance(x, jax.Array) else x, name)
    xs = shard_batch(x, devices, pad=pad, name=name)
    return xs, int(np.shape(x)[0]), xs.shape[0]


def _run(program, where: str, sharding, *args):
    """Run a sharded program and raise its failed run-time check as the typed error. dgjax's checks raise on
    every device (``_checks.check_value``); the ``equinox.error_if`` checks of the libraries below are
    deferred (``_checks.deferred_errors``) and a failed one is raised here, on every process."""
    n_dev = sharding.mesh.size
    with typed_errors(), deferred_errors(n_dev > 1):
        out, ok = program(*args)
    raise_if_not_finite(ok, where, n_dev)
    return out


def _pad_per_sample(v, n: int, n_pad: int, devices, always: bool = False):
    """Pad and shard a per-sample (N, ...) array argument (only when padding, unless ``always``); anything else
    passes through."""
    if (n_pad == n and not always) or v is None or callable(v) or isinstance(v, str) or np.ndim(v) == 0:
        return v
    if np.shape(v)[0] != n:
        return v  # wrong shape: let the function raise its own error naming the argument
    return shard_batch(pad_batch(v, n_pad), devices)


def _pad_sampler(sampler, n: int, n_pad: int, devices):
    """The sampler with its per-sample parameters (``sampler.per_sample()``, the (N, ...) ones) padded to n_pad
    rows and sharded with the batch; scalars and other shapes pass through (the sampler checks them)."""
    if not isinstance(sampler, AbstractSampler):
        return sampler  # None (the default) or a wrong argument, which dg.sample refuses with its own error
    leaves = tuple(sampler.per_sample())
    if not leaves:
        return sampler
    padded = tuple(_pad_per_sample(v, n, n_pad, devices, always=True) for v in leaves)
    return eqx.tree_at(lambda s: tuple(s.per_sample()), sampler, padded)


def _trim(tree, n: int, n_pad: int):
    if n_pad == n:
        return tree
    return jax.tree_util.tree_map(
        lambda a: a[:n] if isinstance(a, jax.Array) and a.ndim >= 1 and a.shape[0] == n_pad else a, tree)


def sample_sharded(score: Callable, process, x_T, *, devices: Sequence | None = None, pad: bool = False,
                   **kwargs):
    """``dg.sample`` data-parallel over ``devices`` (default all), jit-compiled once per configuration.

    Same keyword arguments as ``dg.sample`` (sampler, key, track_logp, divergence, solver, steps, ...), for
    every sampler. x_T (N, *shape) is sharded on its batch axis; N must be a multiple of the device count
    unless ``pad=True`` (module docstring). Returns a ``dg.Sample`` whose per-sample arrays stay sharded
    (with ``pad=True`` and an uneven N they are trimmed to N). Equal to ``dg.sample`` on one device for the
    same key, to float rounding. A sweep over the sampler's array leaves (q, t_switch, noise levels)
    reuses one compiled program.
    """
    x, n, n_pad = _prepare(x_T, devices, pad, "x_T")
    kwargs["sampler"] = _pad_sampler(kwargs.get("sampler"), n, n_pad, devices)
    if "logp_T" in kwargs:
        kwargs["logp_T"] = _pad_per_sample(kwargs["logp_T"], n, n_pad, devices)
    return _trim(_run(_sample_program, "dg.sample_sharded", x.sharding, score, process, x, kwargs, x.sharding),
                 n, n_pad)


def log_likelihood_sharded(score: Callable, process, x0, *, devices: Sequence | None = None, pad: bool = False,
                           **kwargs):
    """``dg.log_likelihood`` data-parallel over ``devices``; arguments and padding as ``sample_sharded``.
    Returns a ``dg.Likelihood`` (logp, logp_stderr, x_T, logp_T per sample; nfe)."""
    x, n, n_pad = _prepare(x0, devices, pad, "x0")
    return _trim(_run(_likelihood_program, "dg.log_likelihood_sharded", x.sharding, score, process, x, kwargs,
                      x.sharding), n, n_pad)


def score_alignment_sharded(score: Callable, process, x_T, t_end, *, devices: Sequence | None = None,
                            pad: bool = False, **kwargs):
    """``dg.score_alignment`` data-parallel over ``devices``; arguments and padding as ``sample_sharded``
    (``t_end`` is static: a Python float). Returns the (N,) alignment, or ``dg.Alignment`` with
    ``return_details=True`` (its aligned_fraction over the N real samples)."""
    x, n, n_pad = _prepare(x_T, devices, pad, "x_T")
    if "w_T" in kwargs:
        kwargs["w_T"] = _pad_per_sample(kwargs["w_T"], n, n_pad, devices)
    out = _trim(_run(_alignment_program, "dg.score_alignment_sharded", x.sharding, score, process, x, t_end, kwargs,
                     x.sharding), n, n_pad)
    if n_pad != n and kwargs.get("return_details", False):
        out = eqx.tree_at(lambda a: a.aligned_fraction, out, jnp.mean(out.value > 0))
    return out
