"""Typed errors that callers catch instead of matching message text (core layer: imports nothing of dgjax):
``InfeasibleGuidance``; ``ModelError`` and ``ArchitectureMismatch`` (unusable model files and checkpoints).

``InfeasibleGuidance`` subclasses ``equinox.EquinoxRuntimeError`` -- the type density guidance's run-time
feasibility check (``equinox.error_if``, MATH.md section 5) raised before it existed -- so existing
``except eqx.EquinoxRuntimeError`` clauses keep catching it.
"""

from __future__ import annotations

import contextlib

import equinox as eqx

INFEASIBLE_MSG = (
    "density guidance is infeasible here: the log-density head-room left at some sample (at most "
    "1/2 c_max |s|^2) is below what the requested rate demands over feasibility_tol units of log-SNR, so "
    "|s| -> 0 and eta blows up (MATH.md section 5, feasibility: the quantile form shifts log p by "
    "1/2 (lambda_max - lambda_min) sqrt(2D) Phi^{-1}(q), about D/2 at most). Move q toward 0.5 (or make the "
    "custom rate b push less), raise data_scale if the data's per-dimension std exceeds it, or pass "
    "feasibility_tol=0 to disable this check (the result is then unreliable)."
)


class InfeasibleGuidance(eqx.EquinoxRuntimeError):
    """Density guidance demanded more log-density head-room than the sample has (MATH.md section 5).

    Raised by ``dg.sample`` (outside ``jax.jit``). Under a user's ``jax.jit`` the check still fires, as
    the runtime error XLA wraps; ``is_infeasible(err)`` recognises both.
    """


def is_infeasible(err: BaseException) -> bool:
    """True for an ``InfeasibleGuidance``, or the same check's error wrapped by XLA under ``jax.jit``."""
    return isinstance(err, InfeasibleGuidance) or INFEASIBLE_MSG[:40] in str(err)


@contextlib.contextmanager
def typed_errors():
    """Re-raise the feasibility check's ``EquinoxRuntimeError`` as ``InfeasibleGuidance`` (same message)."""
    try:
        yield
    except eqx.EquinoxRuntimeError as e:
        if not isinstance(e, InfeasibleGuidance) and INFEASIBLE_MSG[:40] in str(e):
            raise InfeasibleGuidance(str(e)) from e
        raise


class ModelError(ValueError):
    """A model or checkpoint that cannot be used: unknown name, missing, corrupt or mismatched files."""


class ArchitectureMismatch(ModelError):
    """Stored parameters do not fit the architecture the config describes."""
