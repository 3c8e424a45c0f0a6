"""Typed errors: callers catch a class, never match a message (core layer: imports nothing of dgjax).

Every error dgjax raises on purpose derives from ``DgjaxError``::

    DgjaxError
    ├── InvalidArgument (ValueError)          a bad argument, named with its fix (eagerly where it can)
    ├── ModelError (ValueError)               an unusable model file, checkpoint or model name
    │   └── ArchitectureMismatch              stored parameters that do not fit the architecture
    └── RuntimeCheckError (EquinoxRuntimeError, ValueError)
        ├── InfeasibleGuidance                density guidance asked for more head-room than there is
        ├── LeftDataRange                     guided samples left the model's data range
        ├── ModeBifurcation                   mode tracking met a bifurcation (the mode is not unique)
        ├── LinearSolveFailed                 mode tracking's linear solve did not converge
        ├── MaxStepsReached                   an adaptive solve spent its step budget
        └── NonFiniteError (FloatingPointError)  NaN or inf at a named stage

A ``RuntimeCheckError`` (or an ``InvalidArgument`` about traced values, such as a time under ``jax.jit``)
may fire inside a compiled program (``_checks.check_value``: ``equinox.error_if``, or a callback on every
device of a multi-device program), where it comes back as an ``EquinoxRuntimeError`` or an XLA runtime
error carrying only the message. Each such message starts with its class's tag
(``[dgjax.InfeasibleGuidance] ...``, written by ``tagged``), and ``classify`` -- the one place that reads
an exception's text -- turns the wrapped error back into its class. ``typed_errors()`` applies
``classify`` around a call: dgjax's entry points do so themselves; under your own ``jax.jit`` wrap the
call that runs the program in it.
"""

from __future__ import annotations

import contextlib
import re

import equinox as eqx
import jax


class DgjaxError(Exception):
    """Base of every error dgjax raises on purpose."""


class InvalidArgument(DgjaxError, ValueError):
    """A bad argument: the message names it and says how to fix it (eagerly; a check on traced values, such
    as a time under ``jax.jit``, fires at run time with this class's tag)."""

    code = "dgjax.InvalidArgument"


class ModelError(DgjaxError, ValueError):
    """A model or checkpoint that cannot be used: unknown name, missing, corrupt or mismatched files."""


class ArchitectureMismatch(ModelError):
    """Stored parameters do not fit the architecture the config describes."""


class RuntimeCheckError(DgjaxError, eqx.EquinoxRuntimeError, ValueError):
    """A check on computed values failed (eagerly, or at run time inside a compiled program)."""

    code = "dgjax.RuntimeCheckError"


class InfeasibleGuidance(RuntimeCheckError):
    """Density guidance demanded more log-density head-room than the sample has (docs/math.md, section 5)."""

    code = "dgjax.InfeasibleGuidance"


class LeftDataRange(RuntimeCheckError):
    """Guided samples left the model's data range: their log p is not a density of data."""

    code = "dgjax.LeftDataRange"


class ModeBifurcation(RuntimeCheckError):
    """Mode tracking met a bifurcation: the Hessian of log p(x_0 | x_t) is not negative definite."""

    code = "dgjax.ModeBifurcation"


class LinearSolveFailed(RuntimeCheckError):
    """An iterative linear solve (mode tracking's Newton system) did not converge."""

    code = "dgjax.LinearSolveFailed"


class MaxStepsReached(RuntimeCheckError):
    """An adaptive solve spent its ``max_steps`` budget before reaching its end time."""

    code = "dgjax.MaxStepsReached"


class NonFiniteError(RuntimeCheckError, FloatingPointError):
    """NaN or inf appeared at a named stage (an input, a score, a solve's output)."""

    code = "dgjax.NonFiniteError"


CheckError = InvalidArgument | RuntimeCheckError
"""The errors a check on (possibly traced) values raises: each class has the tag ``code`` that ``classify`` reads."""


_TAGGED = {cls.code: cls for cls in (InvalidArgument, RuntimeCheckError, InfeasibleGuidance, LeftDataRange,
                                     ModeBifurcation, LinearSolveFailed, MaxStepsReached, NonFiniteError)}
_TAG = re.compile(r"\[(dgjax\.[A-Za-z]+)\]")
# diffrax's own failure messages (its RESULTS enumeration), the only untagged ones classified
_DIFFRAX = (("maximum number of solver steps", MaxStepsReached),
            ("non-finite values", NonFiniteError))


def tagged(cls: type[CheckError], msg: str) -> str:
    """The message a run-time check of class ``cls`` carries: ``[tag] msg``."""
    return f"[{cls.code}] {msg}"


def classify(err: BaseException) -> BaseException:
    """The typed dgjax error that ``err`` stands for, or ``err`` itself.

    ``err`` may be a dgjax error (returned as is), or the ``EquinoxRuntimeError`` / XLA runtime error a
    compiled program raised for a tagged check (``tagged``) or for one of diffrax's step failures.
    """
    if isinstance(err, DgjaxError):
        return err
    text = str(err)
    m = _TAG.search(text)
    cls = _TAGGED.get(m.group(1)) if m else None
    if cls is None and isinstance(err, (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)):
        cls = next((c for needle, c in _DIFFRAX if needle in text), cls)
        if cls is None and (isinstance(err, eqx.EquinoxRuntimeError) or "EquinoxRuntimeError" in text):
            cls = RuntimeCheckError  # another library's run-time check (equinox.error_if): its message, typed
    if cls is None:
        return err
    typed = cls(_clean(text))
    typed.__cause__ = err
    return typed


def _clean(text: str) -> str:
    """The check's own message from a wrapped error's text (equinox appends a note on how to debug)."""
    m = _TAG.search(text)
    # untagged (diffrax's): the message equinox raised, after its "Above is the stack ..." frames
    body = text[m.end():] if m else text.rpartition("EquinoxRuntimeError: ")[2]
    return body.split("\n\n-------")[0].strip()


@contextlib.contextmanager
def typed_errors():
    """Re-raise run-time check failures from compiled code as their typed dgjax class (``classify``)."""
    try:
        yield
    except Exception as e:
        typed = classify(e)
        if typed is e:
            raise
        if isinstance(e, jax.errors.JaxRuntimeError):
            _drain_runtime_tokens()
        raise typed from e


def _drain_runtime_tokens() -> None:
    """Forget the failed program's per-device runtime tokens. JAX keeps the last token of each device that
    ran a program with host callbacks and re-raises its error at every later ``jax.effects_barrier()``
    (and once more at exit) although the error was handled here."""
    try:
        jax.effects_barrier()
    except Exception:  # noqa: BLE001 -- the error already raised; only its stale tokens go
        from jax._src import dispatch

        dispatch.runtime_tokens.clear()


INFEASIBLE_MSG = (
    "density guidance is infeasible here: the log-density head-room left at some sample (at most "
    "1/2 c_max |s|^2) is below what the requested rate demands over feasibility_tol units of log-SNR, so "
    "|s| -> 0 and eta blows up (docs/math.md section 5, feasibility: the quantile form shifts log p by "
    "1/2 (lambda_max - lambda_min) sqrt(2D) Phi^{-1}(q), about D/2 at most). Move q toward 0.5 (or make the "
    "custom rate b push less), raise data_scale if the data's per-dimension std exceeds it, or pass "
    "feasibility_tol=0 to disable this check (the result is then unreliable).")
