"""Forward noising processes (docs/math.md section 1).

A process is the Gaussian path ``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I)`` with time running from
data (``t_min``) to noise (``t_max``). Each concrete process defines only ``log_alpha(t)`` and
``log_sigma(t)``; everything else (``alpha``, ``sigma``, the log-SNR ``lambda``, the drift
coefficient ``f`` and the squared diffusion ``g2``) is derived here, in one place, by forward-mode
autodiff of those two functions, so the coefficients can never disagree with the marginals:

    f(t)   = d/dt log alpha_t
    g^2(t) = d/dt sigma_t^2 - 2 f sigma_t^2 = 2 sigma_t^2 (d/dt log sigma_t - d/dt log alpha_t)
           = -sigma_t^2 d/dt lambda_t

Processes are immutable pytrees (``equinox.Module``) whose hyper-parameters are static, so they can be
passed through ``jax.jit`` and closed over freely. All time functions accept a scalar ``t`` or an
array of times and act elementwise.
"""

import abc
import inspect
import math
from collections.abc import Callable, Mapping
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import AbstractVar
from jaxtyping import Array

from ._checks import check_param
from ._memory import check_fits_in_memory
from .errors import InvalidArgument


class Coefficients(NamedTuple):
    """The process coefficients at t (docs/math.md section 1): x_t = alpha x_0 + sigma eps, and the forward SDE
    dx = f x dt + g dW with g2 = g^2. A NamedTuple, so positional unpacking keeps working."""

    alpha: Array
    sigma: Array
    f: Array
    g2: Array


class Transition(NamedTuple):
    """The Gaussian kernel between two times s <= t of one forward path (docs/math.md sections 9, 10):
    x_t | x_s ~ N(a x_s, v I), with c = v / a^2 the variance measured at s's scale."""

    a: Array
    v: Array
    c: Array


class Process(eqx.Module):
    """Base class (abstract): a process defines ``log_alpha``, ``log_sigma`` and its time range ``t_min``,
    ``t_max`` (static fields of each final class)."""

    t_min: AbstractVar[float]
    t_max: AbstractVar[float]
    # where constant steps go when the user gives steps= without grid= (dgjax.grids; benchmarks/bench_grids.py)
    default_grid: ClassVar[str] = "t"

    # -- what a subclass defines -------------------------------------------------------------
    @abc.abstractmethod
    def log_alpha(self, t: Array) -> Array:
        """log alpha_t, elementwise in t."""

    @abc.abstractmethod
    def log_sigma(self, t: Array) -> Array:
        """log sigma_t, elementwise in t."""

    # -- derived quantities (the one place where f and g2 come from) --------------------------
    def _log_coeffs_and_rates(self, t):
        """(log alpha, log sigma, d/dt log alpha, d/dt log sigma), elementwise in ``t``."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, float))

        def logs(tt):
            return self.log_alpha(tt), self.log_sigma(tt)

        (la, ls), (dla, dls) = jax.jvp(logs, (t,), (jnp.ones_like(t),))
        return la, ls, dla, dls

    def alpha(self, t) -> Array:
        """alpha_t (shape of ``t``)."""
        return jnp.exp(self.log_alpha(jnp.asarray(t, dtype=jnp.result_type(t, float))))

    def sigma(self, t) -> Array:
        """sigma_t (shape of ``t``)."""
        return jnp.exp(self.log_sigma(jnp.asarray(t, dtype=jnp.result_type(t, float))))

    def log_snr(self, t) -> Array:
        """lambda_t = log(alpha_t^2 / sigma_t^2), decreasing in t."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, float))
        return 2.0 * (self.log_alpha(t) - self.log_sigma(t))

    def time_of_log_snr(self, lam) -> Array:
        """t with lambda_t = lam, the inverse of ``log_snr`` (decreasing in t), for lam of any shape: 100 steps of
        vectorised bisection on [t_min, t_max] (to the dtype's resolution), its derivative 1 / lambda'(t);
        traceable, and concrete under ``jax.ensure_compile_time_eval`` (``dgjax.grids`` uses it so)."""
        lam = jnp.asarray(lam, dtype=jnp.result_type(lam, float))

        @jax.custom_jvp
        def invert(target):
            def halve(_, ab):
                a, b = ab
                m = 0.5 * (a + b)
                later = self.log_snr(m) > target  # lambda(m) above the target: the root lies later in t
                return jnp.where(later, m, a), jnp.where(later, b, m)

            ends = (jnp.full(target.shape, self.t_min, target.dtype), jnp.full(target.shape, self.t_max, target.dtype))
            a, b = jax.lax.fori_loop(0, 100, halve, ends)
            return 0.5 * (a + b)

        @invert.defjvp
        def _(primals, tangents):
            t = invert(primals[0])
            dlam_dt = jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))[1]
            return t, tangents[0] / dlam_dt

        return invert(lam)

    def transition(self, s, t) -> Transition:
        """``Transition(a, v, c)`` of x_t | x_s for s <= t (docs/math.md 9): a = alpha_t / alpha_s,
        v = sigma_t^2 - a^2 sigma_s^2, c = v / a^2. The denoising density p(x_s | x_t) and the ELBO's
        x_t | x_{t_min} both use it. c is computed as ``alpha_s^2 (exp(-lambda_t) - exp(-lambda_s))``
        (= sigma_t^2 / a^2 - sigma_s^2), clipped at 0: >= 0 for s <= t and exactly 0 at s = t. s, t scalars
        or arrays (broadcast)."""
        a = self.alpha(t) / self.alpha(s)
        v = self.sigma(t) ** 2 - a**2 * self.sigma(s) ** 2
        c = self.alpha(s) ** 2 * (jnp.exp(-self.log_snr(t)) - jnp.exp(-self.log_snr(s)))
        return Transition(a, v, jnp.maximum(c, 0.0))

    def f(self, t) -> Array:
        """Drift coefficient f(t) = d/dt log alpha_t of the forward SDE dx = f x dt + g dW."""
        return self._log_coeffs_and_rates(t)[2]

    def g2(self, t) -> Array:
        """Squared diffusion g^2(t) = 2 sigma_t^2 (d/dt log sigma_t - d/dt log alpha_t) > 0."""
        _, ls, dla, dls = self._log_coeffs_and_rates(t)
        return 2.0 * jnp.exp(2.0 * ls) * (dls - dla)

    def coefficients(self, t) -> Coefficients:
        """``Coefficients(alpha, sigma, f, g2)`` at ``t`` from a single forward-mode pass."""
        la, ls, dla, dls = self._log_coeffs_and_rates(t)
        sigma = jnp.exp(ls)
        return Coefficients(jnp.exp(la), sigma, dla, 2.0 * sigma**2 * (dls - dla))

    def coefficients_like(self, t, x) -> Coefficients:
        """``coefficients`` at ``t`` cast to the dtype of ``x`` (the state's precision)."""
        return self.coefficients(jnp.asarray(t, dtype=x.dtype))

    # -- the prior p_T = N(0, sigma_T^2 I) -------------------------------------------------------
    @property
    def sigma_T(self) -> float:
        return float(jnp.exp(self.log_sigma(jnp.asarray(self.t_max, dtype=float))))

    def prior_sample(self, key: Array, shape) -> Array:
        """Draw x_T ~ N(0, sigma_T^2 I); ``shape`` includes the batch axis: (N, *event_shape)."""
        shape = (shape,) if isinstance(shape, int) else shape
        try:
            shape = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise InvalidArgument(f"shape: must be a tuple of integers (N, *event_shape); got {shape!r}") from None
        check_param(len(shape) >= 1 and all(v >= 0 for v in shape), "shape",
                    f"must be (N, *event_shape) with non-negative sizes; got {shape}")
        check_fits_in_memory(4 * math.prod(shape), f"prior_sample of shape {shape}",
                             "draw and process fewer samples at a time")
        return self.sigma(self.t_max) * jax.random.normal(key, tuple(shape))

    def prior_log_prob(self, x: Array) -> Array:
        """log N(x; 0, sigma_T^2 I) summed over the event axes: (N, *shape) -> (N,).

        This is the standard prior; it ignores the data term alpha_T E[x_0] and the data spread
        alpha_T^2 Var[x_0], which are small for VP processes (alpha_T ~ 7e-3 at lambda_min = -10) but
        not for VE/EDM unless sigma_max dominates the data scale (docs/math.md section 1).
        """
        x = jnp.asarray(x)
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1)
        return gaussian_log_prob(sq, math.prod(x.shape[1:]), self.sigma(self.t_max) ** 2)


def gaussian_log_prob(sq, dim: int, var):
    """log N(x; 0, var I) in D = ``dim`` dimensions from sq = |x|^2: -D/2 log(2 pi var) - sq / (2 var). The ELBO's
    closed-form prior term passes E|x_T|^2 for sq (the log-density is linear in it)."""
    return -0.5 * dim * jnp.log(2 * jnp.pi * var) - 0.5 * sq / var


def _check_finite_params(**values) -> None:
    for name, v in values.items():
        check_param(isinstance(v, (int, float)) and math.isfinite(v), name, f"must be a finite number; got {v!r}")


def _sigma_range(sigma_min, sigma_max) -> tuple[float, float]:
    """(sigma_min, sigma_max) as floats, checked finite with 0 < sigma_min < sigma_max (VE's and EDM's range)."""
    _check_finite_params(sigma_min=sigma_min, sigma_max=sigma_max)
    check_param(0 < sigma_min < sigma_max, "sigma_min", f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    return float(sigma_min), float(sigma_max)


def _log_sigmoid(z):
    return -jax.nn.softplus(-z)


def _half_log1m_exp2(la):
    """0.5 * log(1 - exp(2 la)) for la < 0 (sigma from alpha on variance-preserving paths)."""
    return 0.5 * jnp.log(-jnp.expm1(2.0 * la))


class VP(Process):
    """Variance preserving, log-SNR linear in t on [0, 1]:
    lambda_t = lambda_max + (lambda_min - lambda_max) t, alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).
    Default step grid (``steps=`` without ``grid=``): "t" (benchmarks/bench_grids.py, uniform in t = uniform in
    log-SNR here; Heun x64 oracle error 1.3e-3 nats/dim).
    """

    default_grid: ClassVar[str] = "t"

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    lambda_min: float = eqx.field(static=True)
    lambda_max: float = eqx.field(static=True)

    def __init__(self, lambda_min: float = -10.0, lambda_max: float = 10.0):
        _check_finite_params(lambda_min=lambda_min, lambda_max=lambda_max)
        check_param(lambda_min < lambda_max, "lambda_min", f"must be below lambda_max ({lambda_min} >= {lambda_max})")
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.t_min, self.t_max = 0.0, 1.0

    def _lam(self, t):
        return self.lambda_max + (self.lambda_min - self.lambda_max) * t

    def log_alpha(self, t):
        return 0.5 * _log_sigmoid(self._lam(t))

    def log_sigma(self, t):
        return 0.5 * _log_sigmoid(-self._lam(t))


class VPCosine(Process):
    """Variance preserving cosine schedule (Nichol & Dhariwal):
    alpha_t = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s)), sigma = sqrt(1 - alpha^2).
    alpha reaches 0 at t = 1, so t_max < 1 (default 0.999, where lambda ~ -12.9).
    Default step grid (``steps=`` without ``grid=``): "t" (benchmarks/bench_grids.py, Heun x64 oracle error
    4.6e-4 nats/dim, log_snr 1.8e-3, edm 3.7e-3).
    """

    default_grid: ClassVar[str] = "t"

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    s: float = eqx.field(static=True)

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.999):
        check_param(0 < t_min < t_max < 1, "t_max", f"need 0 < t_min < t_max < 1, got {t_min}, {t_max}")
        self.s, self.t_min, self.t_max = float(s), float(t_min), float(t_max)

    def log_alpha(self, t):
        s = self.s
        return jnp.log(jnp.cos(0.5 * jnp.pi * (t + s) / (1 + s))) - math.log(math.cos(0.5 * math.pi * s / (1 + s)))

    def log_sigma(self, t):
        return _half_log1m_exp2(self.log_alpha(t))


class VE(Process):
    """Variance exploding: alpha = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t, t in [0, 1]. Default step
    grid: "edm" (benchmarks/bench_grids.py, Heun x64 oracle error 1.1e-2 nats/dim, t = log_snr 1.6e-2)."""

    default_grid: ClassVar[str] = "edm"

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    sigma_min: float = eqx.field(static=True)
    sigma_max: float = eqx.field(static=True)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min, self.sigma_max = _sigma_range(sigma_min, sigma_max)
        self.t_min, self.t_max = 0.0, 1.0

    def log_alpha(self, t):
        return jnp.zeros_like(t)

    def log_sigma(self, t):
        return math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)


class EDM(Process):
    """EDM (Karras et al.): alpha = 1, sigma_t = t, t in [sigma_min, sigma_max] = [0.002, 80]. Default step
    grid: "edm" (benchmarks/bench_grids.py, Heun x64 oracle error 1.4e-2 nats/dim, log_snr 2.3e-2, t 3.9)."""

    default_grid: ClassVar[str] = "edm"

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.t_min, self.t_max = _sigma_range(sigma_min, sigma_max)

    @property
    def sigma_min(self) -> float:
        return self.t_min

    @property
    def sigma_max(self) -> float:
        return self.t_max

    def log_alpha(self, t):
        return jnp.zeros_like(t)

    def log_sigma(self, t):
        return jnp.log(t)


class LinearFlow(Process):
    """Linear interpolant (rectified flow / flow matching): alpha = 1 - t, sigma = t, t in [eps, 1 - eps].
    Default step grid: "t" (benchmarks/bench_grids.py, Heun x64 oracle error 2.1e-4 nats/dim, log_snr 1.6e-3,
    edm 2.8e-3)."""

    default_grid: ClassVar[str] = "t"

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, eps: float = 1e-3):
        check_param(0 < eps < 0.5, "eps", f"must lie in (0, 0.5), got {eps}")
        self.eps = float(eps)
        self.t_min, self.t_max = self.eps, 1.0 - self.eps

    def log_alpha(self, t):
        return jnp.log1p(-t)

    def log_sigma(self, t):
        return jnp.log(t)


class VPSDE(Process):
    """score_sde's VP SDE on [t_min, T]: beta(t) = beta_min + (beta_max - beta_min) t / T,
    log alpha_t = -1/2 int_0^t beta = -1/2 (beta_min t + (beta_max - beta_min) t^2 / (2 T)),
    sigma_t = sqrt(1 - alpha_t^2); constant beta when beta_min == beta_max. Prior N(0, sigma_T^2 I).

    ``VPSDE(0.1, 20.0, 1.0)`` is ``VPLinear()``; ``VPSDE(1.0, 1.0, 10.0)`` is galaxygrad's process
    (``int_beta(t) = t``: alpha_t = exp(-t/2), sigma_t^2 = 1 - exp(-t), t in (0, 10]).
    Default step grid (``steps=`` without ``grid=``): "log_snr" (benchmarks/bench_grids.py, Heun x64 oracle
    error for VPSDE(1, 1, 10) 8.6e-4 nats/dim, edm 1.5e-3, t 0.92).
    """

    default_grid: ClassVar[str] = "log_snr"

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_min: float = 1e-3):
        _check_finite_params(beta_min=beta_min, beta_max=beta_max, T=T, t_min=t_min)
        check_param(0 < beta_min <= beta_max, "beta_min", f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        check_param(T > 0, "T", f"must be positive, got {T}")
        check_param(0 < t_min < T, "t_min", f"must lie in (0, T) (sigma is 0 at t = 0), got {t_min} with T = {T}")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)
        self.t_min, self.t_max = float(t_min), float(T)

    def log_alpha(self, t):
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T)

    def log_sigma(self, t):
        return _half_log1m_exp2(self.log_alpha(t))


def VPLinear(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> VPSDE:  # noqa: N802 (a class name)
    """Variance preserving with linear beta (DDPM / score-SDE) on [t_min, 1]: ``VPSDE(beta_min, beta_max, 1.0,
    t_min)``, log alpha_t = -1/2 (beta_min t + 1/2 (beta_max - beta_min) t^2), sigma = sqrt(1 - alpha^2).
    A name for the VPSDE it is (so ``type(VPLinear())`` is ``VPSDE``). Default step grid "log_snr"
    (benchmarks/bench_grids.py, Heun x64 oracle error 1.1e-3 nats/dim, t 1.7e-3, edm 2.0e-3)."""
    return VPSDE(beta_min, beta_max, 1.0, t_min)


class CustomProcess(Process):
    """A process from the user's own schedule: ``log_alpha(t)`` and ``log_sigma(t)`` (pure, elementwise,
    differentiable jnp functions of t) on [t_min, t_max]. f and g^2 are derived by forward-mode autodiff
    like every other process (module docstring), so only the marginals need writing down. The log-SNR
    2 (log alpha - log sigma) must decrease strictly in t (checked on a grid of 257 points here).

    Example, galaxygrad's process (alpha_t = exp(-t/2), sigma_t^2 = 1 - exp(-t)):

        dg.CustomProcess(lambda t: -0.5 * t, lambda t: 0.5 * jnp.log(-jnp.expm1(-t)), t_min=1e-3, t_max=10.0)

    ``default_grid``: "t" unless given (the grids benchmark's finding for VP-type schedules; "log_snr" is
    a safe choice for unknown ones).
    """

    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    log_alpha_fn: Callable = eqx.field(static=True)
    log_sigma_fn: Callable = eqx.field(static=True)
    default_grid: str = eqx.field(static=True)

    def __init__(self, log_alpha: Callable, log_sigma: Callable, t_min: float, t_max: float, default_grid: str = "t"):
        check_param(callable(log_alpha) and callable(log_sigma), "log_alpha",
                    "log_alpha and log_sigma must be functions of t (jnp, elementwise)")
        check_param(math.isfinite(t_min) and math.isfinite(t_max) and t_min < t_max, "t_min",
                    f"need finite t_min < t_max, got {t_min}, {t_max}")
        check_param(default_grid in ("t", "log_snr", "edm"), "default_grid",
                    f"must be 't', 'log_snr' or 'edm', got {default_grid!r}")
        self.log_alpha_fn, self.log_sigma_fn = log_alpha, log_sigma
        self.t_min, self.t_max, self.default_grid = float(t_min), float(t_max), default_grid
        ts = jnp.linspace(self.t_min, self.t_max, 257)
        lam = self.log_snr(ts)
        check_param(bool(jnp.all(jnp.isfinite(lam))), "log_sigma",
                    f"log_alpha / log_sigma are not finite on [t_min, t_max] = [{t_min}, {t_max}] (sigma must be > 0)")
        check_param(bool(jnp.all(jnp.diff(lam) < 0)), "log_sigma",
                    "the log-SNR 2 (log_alpha - log_sigma) must decrease strictly in t on [t_min, t_max]")

    def log_alpha(self, t):
        return self.log_alpha_fn(t) + jnp.zeros_like(t)

    def log_sigma(self, t):
        return self.log_sigma_fn(t) + jnp.zeros_like(t)


# ------------------------------------------------------------------------------------------------------
# the process registry: name <-> constructor <-> config (model files, the CLI and the tests use it)
# ------------------------------------------------------------------------------------------------------
PROCESSES: dict[str, Callable[..., Process]] = {
    "VP": VP, "VPLinear": VPLinear, "VPCosine": VPCosine, "VE": VE, "EDM": EDM, "LinearFlow": LinearFlow,
    "VPSDE": VPSDE,
}
"""The named processes: ``PROCESSES[name](**config)`` builds one (``VPLinear`` builds a ``VPSDE``)."""
_ALIASES = {"cosine": "VPCosine", "flow": "LinearFlow"}  # the CLI's short names


def process_constructor(name: str) -> Callable[..., Process]:
    """The constructor registered under ``name`` (case-insensitive; also "cosine" and "flow")."""
    by_lower = {k.lower(): k for k in PROCESSES} | _ALIASES
    key = by_lower.get(str(name).lower())
    if key is None:
        raise InvalidArgument(f"process: unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    return PROCESSES[key]


def process_fields(name: str) -> tuple[str, ...]:
    """The keyword arguments (config fields) of the process registered under ``name``."""
    return tuple(inspect.signature(process_constructor(name)).parameters)


def process_from_config(cfg: Mapping) -> Process:
    """``{"name": NAME, **fields}`` -> the process (``process_to_config``'s inverse). Unknown names or fields
    raise InvalidArgument naming the accepted ones."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name is None:
        raise InvalidArgument(f"process: a process config needs a 'name' (one of {sorted(PROCESSES)}); got {cfg}")
    fields = process_fields(name)
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
        raise InvalidArgument(f"process: unknown process field(s) {unknown} for {name}; it takes {', '.join(fields)}")
    return process_constructor(name)(**cfg)


def process_to_config(process: Process) -> dict:
    """``{"name": class name, **the constructor's arguments}`` for a registered process class."""
    name = type(process).__name__
    if PROCESSES.get(name) is not type(process):
        raise InvalidArgument(f"process: {name} is not a registered process ({sorted(PROCESSES)}); it has no config")
    return {"name": name, **{k: getattr(process, k) for k in process_fields(name)}}
