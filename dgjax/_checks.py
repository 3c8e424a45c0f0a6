"""Input validation shared by every module: clear errors that name the argument and the fix.

Checks on shapes and static values raise ``ValueError`` at trace time. Checks on array *values*
(finiteness, time ranges) use ``equinox.error_if`` so that they also fire under ``jax.jit``
(as a runtime error carrying the same message) instead of letting a NaN through silently.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp


def check_param(ok: bool, name: str, msg: str) -> None:
    """Raise ``ValueError('name: msg')`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}: {msg}")


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not a tracer inside jit/grad/vmap)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_finite(x, name: str):
    """Return ``x``; raise (eagerly, or at run time under jit) if it has NaN or inf entries."""
    x = jnp.asarray(x)
    msg = f"{name} contains non-finite values (NaN or inf); pass finite arrays (check the upstream computation)"
    return check_value(x, ~jnp.all(jnp.isfinite(x)), msg)


def check_time(process, t, name: str = "t", *, closed: bool = True):
    """Return ``t`` as an array; raise if any entry lies outside [t_min, t_max] of ``process``
    (or outside the open interval when ``closed=False``)."""
    t = jnp.asarray(t, dtype=jnp.result_type(t, float))
    lo, hi = process.t_min, process.t_max
    rng = f"[{lo}, {hi}]" if closed else f"({lo}, {hi})"
    if closed:
        bad = (t < lo) | (t > hi) | ~jnp.isfinite(t)
    else:
        bad = (t <= lo) | (t >= hi) | ~jnp.isfinite(t)
    msg = f"{name} must lie in {rng}, the time range of {type(process).__name__}"
    return check_value(t, jnp.any(bad), msg, lambda: t)


def check_batch(x, name: str = "x"):
    """``x`` must be an array with a leading batch axis: shape (N, *shape)."""
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"{name} must have a leading batch axis, shape (N, *shape); got a scalar")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    return x


def check_score_fn(score, x, t, name: str = "score") -> None:
    """The score must map (x (N, *shape), t) to an array of exactly x's shape and dtype."""
    try:
        out = jax.eval_shape(score, x, t)
    except Exception as e:  # re-raise with the contract spelled out
        raise ValueError(
            f"{name}(x, t) failed for x of shape {tuple(x.shape)} and t of shape {tuple(jnp.shape(t))}: {e}. "
            f"A score function takes x of shape (N, *shape) and a scalar or (N,) t."
        ) from e
    if getattr(out, "shape", None) != x.shape:
        raise ValueError(
            f"{name}(x, t) returned shape {getattr(out, 'shape', type(out))} for x of shape {tuple(x.shape)}; "
            f"a score function must return an array like x (check the model's output shape or the data shape)"
        )
    if out.dtype != x.dtype:
        raise ValueError(f"{name}(x, t) returned dtype {out.dtype} for x of dtype {x.dtype}; cast the output to x's dtype")


def check_per_sample(v, n: int, name: str):
    """``v`` must have shape (N,)."""
    v = jnp.asarray(v)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per sample); got {v.shape}")
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
    raise ``ValueError('name: returned shape ... for x of shape ...; fix')``."""
    expected = x.shape if expected is None else expected
    if getattr(v, "shape", None) != expected:
        raise ValueError(f"{name}: returned shape {getattr(v, 'shape', type(v))} for x of shape {x.shape}; {fix}")
    return v


def check_value(x, bad, msg: str, detail=None):
    """Return ``x``; raise ``ValueError(msg)`` now when ``bad`` is concrete and true, else attach
    ``equinox.error_if`` so the check fires at run time under jit. ``detail()`` (optional) is appended to
    the eager message (e.g. the offending value)."""
    if is_concrete(bad):  # test the result, not x: under jit even a closed-over constant gives a tracer
        if bool(bad):
            raise ValueError(msg if detail is None else f"{msg}; got {detail()}")
        return x
    return eqx.error_if(x, bad, msg)
