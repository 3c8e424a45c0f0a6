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
    bad = ~jnp.all(jnp.isfinite(x))
    # test the *result*: under jit, operations on a closed-over concrete array still give tracers
    if is_concrete(bad):
        if bool(bad):
            raise ValueError(msg)
        return x
    return eqx.error_if(x, bad, msg)


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
    any_bad = jnp.any(bad)
    if is_concrete(any_bad):  # the result, not t: see check_finite
        if bool(any_bad):
            raise ValueError(f"{msg}; got {t}")
        return t
    return eqx.error_if(t, any_bad, msg)


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
