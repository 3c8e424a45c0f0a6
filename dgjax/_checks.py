"""Input validation shared by every module: clear errors that name the argument and the fix.

Checks on shapes and static values raise ``dg.InvalidArgument`` at trace time. Checks on array *values*
(finiteness, time ranges, and the run-time checks of ``dgjax.errors``) take the error class to raise
(``check_value``): eagerly they raise it; on traced values they use ``equinox.error_if`` with the
class's tagged message, so that they also fire under ``jax.jit`` and ``errors.classify`` gives the
class back, instead of letting a NaN through silently.
"""

from __future__ import annotations

import contextvars
import functools
import math
from typing import TypeVar

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .errors import CheckError, InvalidArgument, NonFiniteError, tagged, typed_errors

T = TypeVar("T")
S = TypeVar("S")


def check_param(ok: bool, name: str, msg: str) -> None:
    """Raise ``InvalidArgument('name: msg')`` unless ``ok``."""
    if not ok:
        raise InvalidArgument(f"{name}: {msg}")


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not a tracer inside jit/grad/vmap)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_finite(x, name: str, cls: type[CheckError] = NonFiniteError) -> jax.Array:
    """Return ``x``; raise ``cls`` (eagerly, or at run time under jit) if it has NaN or inf entries."""
    x = jnp.asarray(x)
    msg = f"{name} contains non-finite values (NaN or inf); pass finite arrays (check the upstream computation)"
    return check_value(x, ~jnp.all(jnp.isfinite(x)), msg, cls=cls)


def check_time(process, t, name: str = "t", *, closed: bool = True) -> jax.Array:
    """Return ``t`` as an array; raise if any entry lies outside [t_min, t_max] of ``process``
    (or outside the open interval when ``closed=False``)."""
    lo, hi = process.t_min, process.t_max
    rng = f"[{lo}, {hi}]" if closed else f"({lo}, {hi})"
    msg = f"{name} must lie in {rng}, the time range of {type(process).__name__}"
    # concrete times are checked in NumPy, now: jnp operations under jit trace even constants
    xp = np if is_concrete(t) else jnp
    tv = xp.asarray(t, dtype=float) if xp is np else t
    bad = ((tv < lo) | (tv > hi) if closed else (tv <= lo) | (tv >= hi)) | ~xp.isfinite(tv)
    t = jnp.asarray(t, dtype=jnp.result_type(t, float))
    return check_value(t, xp.any(bad), msg, lambda: tv, cls=InvalidArgument)


def check_span(process, t_from: S, t_to: S, x: T, *, names: tuple[str, str], why: str,
               decreasing: bool = True) -> tuple[T, S | jax.Array, S | jax.Array]:
    """Both ends of a solve in [t_min, t_max] and in the solve's direction: ``t_to`` below ``t_from`` (toward the
    data: sampling, denoising) or above it (``decreasing=False``: toward the noise, the forward SDE). Raises
    ``InvalidArgument`` now for concrete times, at run time under jit. Returns (x, t_from, t_to): traced times
    come back carrying their range checks and x the order check (jit drops checks whose output is unused)."""
    a, b = names
    checked = (check_time(process, t_from, a), check_time(process, t_to, b))
    # traced times: keep their checks (concrete ones stay Python numbers)
    t0, t1 = (t_from, t_to) if is_concrete((t_from, t_to)) else checked
    tf, tt = jnp.asarray(t0), jnp.asarray(t1)
    bad = ~(tt < tf) if decreasing else ~(tt > tf)
    msg = f"{b}: {why}, so {b} must be {'below' if decreasing else 'above'} {a}"
    return check_value(x, bad, msg, lambda: f"{b} = {float(tt)}, {a} = {float(tf)}"), t0, t1


def check_batch(x, name: str = "x") -> jax.Array:
    """``x`` must be an array with a leading batch axis: shape (N, *shape)."""
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise InvalidArgument(f"{name} must have a leading batch axis, shape (N, *shape); got a scalar")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InvalidArgument(f"{name} must be a floating-point array; got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise InvalidArgument(f"{name} has no rows (shape {tuple(x.shape)}); pass at least one sample, "
                              f"shape (N >= 1, *shape)")
    if 0 in x.shape[1:]:  # D = 0: a log-density of nothing
        raise InvalidArgument(f"{name} has an empty event (shape {tuple(x.shape)}); each sample needs D >= 1 "
                              f"entries, shape (N, *shape) with every axis >= 1")
    if jnp.finfo(x.dtype).bits < 32:
        # the solver state and the log-density would be integrated in this precision (log p off by nats)
        raise InvalidArgument(f"{name} has dtype {x.dtype}: the solver and the log-density would run in that "
                              f"precision. Pass float32 (or float64) {name}; to run the network in {x.dtype}, load "
                              f"the model with dg.load_model(..., compute_dtype=jnp.{x.dtype}) "
                              f"(TrainedModel.with_compute_dtype)")
    return x


def check_samples(x, name: str = "x") -> jax.Array:
    """A batch of samples, shape (N, *shape): ``check_batch`` (a floating array with a leading batch axis, no
    empty axis), then ``check_finite`` (no NaN or inf, a ``NonFiniteError`` eagerly or at run time under jit)."""
    return check_finite(check_batch(x, name), name)


def check_score_fn(score, x, t, name: str = "score") -> None:
    """The score must map (x (N, *shape), t) to an array of exactly x's shape and dtype."""
    try:
        out = jax.eval_shape(score, x, t)
    except Exception as e:  # re-raise with the contract spelled out
        raise InvalidArgument(
            f"{name}(x, t) failed for x of shape {tuple(x.shape)} and t of shape {tuple(jnp.shape(t))}: {e}. "
            f"A score function takes x of shape (N, *shape) and a scalar or (N,) t."
        ) from e
    if getattr(out, "shape", None) != x.shape:
        raise InvalidArgument(
            f"{name}(x, t) returned shape {getattr(out, 'shape', type(out))} for x of shape {tuple(x.shape)}; "
            f"a score function must return an array like x (check the model's output shape or the data shape)"
        )
    if out.dtype != x.dtype:
        raise InvalidArgument(f"{name}(x, t) returned dtype {out.dtype} for x of dtype {x.dtype}; cast the output "
                              f"to x's dtype")


def check_per_sample(v, n: int, name: str):
    """``v`` must have shape (N,)."""
    v = jnp.asarray(v)
    if v.shape != (n,):
        raise InvalidArgument(f"{name} must have shape ({n},) (one value per sample); got {v.shape}")
    return v


def event_dim(x) -> int:
    """D = prod(shape) of the per-sample event shape of a batched array (N, *shape)."""
    return math.prod(x.shape[1:])


def bcast(v, x):
    """Broadcast a scalar or per-sample (N,) value against batched ``x`` (N, *shape)."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def batch_dot(a, b):
    """Per-sample inner product over the event axes: (N, *shape) x (N, *shape) -> (N,)."""
    return jnp.sum(jnp.reshape(a * b, (a.shape[0], -1)), axis=-1)


def checked_shape(v, x, name: str, fix: str, expected=None):
    """Return ``v``, a user callable's output, if its shape is ``expected`` (default x's shape); otherwise
    raise ``InvalidArgument('name: returned shape ... for x of shape ...; fix')``."""
    expected = x.shape if expected is None else expected
    if getattr(v, "shape", None) != expected:
        raise InvalidArgument(f"{name}: returned shape {getattr(v, 'shape', type(v))} for x of shape {x.shape}; {fix}")
    return v


def check_value(x: T, bad, msg: str, detail=None, *, cls: type[CheckError] = InvalidArgument) -> T:
    """Return ``x``; raise ``cls(msg)`` now when ``bad`` is concrete and true, else attach
    ``equinox.error_if`` with ``errors.tagged(cls, msg)`` so the check fires at run time under jit and
    ``errors.classify`` gives ``cls`` back. ``detail()`` (optional) is appended to the eager message (e.g.
    the offending value). ``cls``: ``InvalidArgument`` for a bad argument, a ``RuntimeCheckError`` class
    for a check on computed values."""
    if is_concrete(bad):  # test the result, not x: under jit even a closed-over constant gives a tracer
        if bool(bad):
            raise cls(msg if detail is None else f"{msg}; got {detail()}")
        return x
    mesh = _program_mesh(x) or _ENTRY_MESH.get()
    if mesh is not None:  # a multi-device program (issue 24, item 7): raise on every device at once
        return _error_everywhere(x, jnp.any(bad), tagged(cls, msg), mesh)
    return eqx.error_if(x, bad, tagged(cls, msg))


def _program_mesh(tree):
    """The device mesh of the program tracing ``tree``'s arrays when it spans several devices (the batch of
    ``dg.shard_batch`` under the user's ``jax.jit``, or a sharded entry point), else None. (Values that come
    out of a solver's loop may have lost it: ``entry_point`` records the mesh of the arguments.)"""
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.core.Tracer):
            mesh = getattr(getattr(jax.typeof(leaf), "sharding", None), "mesh", None)
            if mesh is not None and mesh.size > 1:
                return mesh
    return None


# the multi-device mesh of the entry point being traced (set by ``entry_point`` for the duration of the call)
_ENTRY_MESH: contextvars.ContextVar = contextvars.ContextVar("dgjax_entry_mesh", default=None)


def entry_point(fn):
    """Decorate a public entry point: its errors are typed (``errors.typed_errors``), and while it is traced
    for a multi-device program (an argument traced with a mesh of several devices), every run-time check
    inside raises on every device (``check_value``)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        token = _ENTRY_MESH.set(_program_mesh((args, kwargs)) or _ENTRY_MESH.get())
        try:
            with typed_errors():
                return fn(*args, **kwargs)
        finally:
            _ENTRY_MESH.reset(token)

    return wrapped


def _error_everywhere(x, bad, msg: str, mesh):
    """``equinox.error_if`` for a multi-device program. equinox's host callback runs on device 0 only: it
    raises there while the other devices wait in the next collective until XLA's timeout aborts the
    process (SIGABRT after ~60 s). Here the (replicated) flag goes through ``shard_map``, so every device
    takes the failing branch and raises in its own callback: the program stops at once and the error
    reaches Python on every process, carrying ``msg``. Outside AD (``custom_jvp``), as equinox's."""
    from jax.sharding import PartitionSpec

    def raises(flag):
        if np.any(flag):
            raise RuntimeError(msg)
        return np.zeros((), np.bool_)

    def on_device(flag):
        fail = lambda: jax.pure_callback(raises, jax.ShapeDtypeStruct((), jnp.bool_), flag,  # noqa: E731
                                         vmap_method="expand_dims")
        return jax.lax.cond(flag, fail, lambda: jnp.zeros((), jnp.bool_))

    @jax.custom_jvp
    def check(x, bad):
        flag = jax.shard_map(on_device, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec(),
                             check_vma=False)(bad)
        # a data dependency on the callback's output, so that it is not optimised away
        return jax.tree_util.tree_map(
            lambda a: jnp.where(flag, jnp.nan, a) if jnp.issubdtype(a.dtype, jnp.inexact) else a, x)

    @check.defjvp
    def _jvp(primals, tangents):
        return check(*primals), tangents[0]

    return check(x, bad)


# ------------------------------------------------------------------------------------------------------
# run-time checks that work on many devices (issue 15)
# ------------------------------------------------------------------------------------------------------
# ``equinox.error_if`` raises through a host callback. Inside a program sharded over several devices the
# callback raises on one device while the others wait in the solver's collectives (the adaptive step's
# error norm, the while loop's condition): the process hangs until XLA's collective timeout and then aborts
# (SIGABRT), and no Python exception is ever seen. dgjax's own checks avoid this at trace time
# (``check_value`` -> ``_error_everywhere``). For the ``equinox.error_if`` checks of the libraries below
# (diffrax, lineax, optimistix), while a sharded entry point is traced (``deferred_errors``) a failed check
# instead replaces its value by NaN; the program returns a replicated "all finite" flag (``all_finite``)
# and the host raises after it returns (``raise_if_not_finite``), on every process.
class deferred_errors:
    """Context manager: while active, ``equinox.error_if`` (used by every run-time check, here and in
    diffrax) turns failing values into NaN instead of calling back to the host. Enter it only around the
    tracing of a multi-device program whose outputs are then checked with ``all_finite``."""

    def __init__(self, active: bool = True):
        self.active = active

    def __enter__(self):
        import equinox._errors as _eqx_errors

        # equinox reads this module setting when error_if is traced and has no public switch for it
        self._mod = _eqx_errors
        self._old = _eqx_errors.EQX_ON_ERROR  # pyright: ignore[reportPrivateImportUsage]
        if self.active:
            _eqx_errors.EQX_ON_ERROR = "nan"  # pyright: ignore[reportPrivateImportUsage]
        return self

    def __exit__(self, *exc):
        self._mod.EQX_ON_ERROR = self._old  # pyright: ignore[reportPrivateImportUsage]
        return False


def all_finite(tree) -> jax.Array:
    """One boolean: every floating entry of every array leaf of ``tree`` is finite (a global reduction, so
    under sharding every device and process gets the same value)."""
    oks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
           if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(oks)) if oks else jnp.asarray(True)


def raise_if_not_finite(ok, where: str, n_devices: int) -> None:
    """Raise ``NonFiniteError`` on the host (every process) when a sharded program's outputs were not all
    finite."""
    if not bool(ok):
        raise NonFiniteError(
            f"{where}: the result holds NaN or inf on some of the {n_devices} devices. Under sharding, a failed "
            f"run-time check (non-finite input or intermediate values, infeasible density guidance, a sample "
            f"leaving the data range, the solver reaching max_steps) marks its values with NaN instead of "
            f"aborting the program; run the same call without sharding (dg.sample / dg.log_likelihood / "
            f"dg.score_alignment on one device, or devices=jax.devices()[:1]) to see which check failed and why.")


def check_output(y, stage: str, cls: type[CheckError] = NonFiniteError):
    """Check the output of a solve (any pytree) for NaN/inf, naming the ``stage`` that produced it
    (raises ``cls``, by default ``NonFiniteError``)."""
    msg = (f"{stage} produced non-finite values (NaN or inf). Possible causes: a score that returns NaN/inf "
           f"(check the model's parameters and inputs), inputs far outside the data range, or too few solver "
           f"steps for a stiff path (use more steps or the adaptive solver)")
    return check_value(y, ~all_finite(jax.tree_util.tree_map(jnp.asarray, y)), msg, cls=cls)


def check_int(v, name: str, minimum: int = 1) -> int:
    """``v`` must be a Python or NumPy integer (not a bool) >= ``minimum``; returns it as ``int``."""

    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise InvalidArgument(f"{name}: must be an integer >= {minimum}; got {v!r}")
    return int(v)


def check_key(key, name: str = "key"):
    """A single PRNG key (``jax.random.key(seed)`` or a legacy uint32 (2,) key), not a seed or a batch."""
    if key is None:
        return key
    if isinstance(key, (int, float)) or not hasattr(key, "dtype"):
        raise InvalidArgument(f"{name}: must be a PRNG key such as jax.random.key(0); got {key!r}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise InvalidArgument(f"{name}: must be a single PRNG key (shape ()); got a batch of keys of shape "
                                  f"{key.shape}")
    elif not (key.dtype == jnp.uint32 and key.shape == (2,)):
        raise InvalidArgument(f"{name}: must be a single PRNG key such as jax.random.key(0); got an array of dtype "
                         f"{key.dtype} and shape {key.shape}")
    return key


def check_score_value(s, x, name: str = "score(x, t)"):
    """A score's value ``s`` at x: shape exactly x's and x's dtype (``InvalidArgument``: no broadcasting of an
    (N, 1) or (D,) output into a finite wrong answer), finite (``NonFiniteError``, eagerly or at run time)."""
    if getattr(s, "shape", None) != x.shape:
        raise InvalidArgument(f"{name} returned shape {getattr(s, 'shape', type(s))} for x of shape "
                              f"{tuple(x.shape)}; a score function must return an array like x")
    if s.dtype != x.dtype:
        raise InvalidArgument(f"{name} returned dtype {s.dtype} for x of dtype {x.dtype}; return x's dtype "
                              f"(float32 or float64)")
    return check_nonfinite(s, name)


def check_nonfinite(v, stage: str):
    """Return ``v`` (an array); raise ``NonFiniteError`` naming ``stage`` (eagerly, or at run time under jit)
    if it holds NaN or inf."""
    msg = f"{stage} returned non-finite values (NaN or inf): check the model's parameters and its inputs"
    return check_value(v, ~jnp.all(jnp.isfinite(v)), msg, cls=NonFiniteError)
