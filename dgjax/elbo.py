"""The ELBO of a diffusion model (docs/math.md section 10): a lower bound of the model's reverse-SDE log-density,
estimated by Monte Carlo along forward paths, without any JVP (Stein's identity).

With x_t | x ~ N(a x, v I), a = alpha_t / alpha_{t_min}, v = sigma_t^2 - a^2 sigma_{t_min}^2 (forward SDE
started at x at t_min), docs/math.md 4(e) in expectation gives

    log p_{t_min}(x) = E[log p_T(x_T)] - int_{t_min}^T E[g^2 div s + 1/2 g^2 |s|^2 - f D](x_t) dt.

With the model's score s_theta and the prior N(0, sigma_T^2 I) the right-hand side is the ELBO. Here time
is drawn uniformly in log-SNR lambda (``dt = dlambda / |lambda'|``, ``g^2 / |lambda'| = sigma^2``), so the
integrand per unit lambda is

    sigma^2 div s + 1/2 sigma^2 |s|^2 - f D sigma^2 / g^2,

and ``div s`` is replaced by Stein's identity ``E[div s(x_t)] = E[eps . s(x_t)] / sqrt(v)`` with
x_t = a x + sqrt(v) eps. Draws: ``num_samples`` strata of [lambda_T, lambda_{t_min}] with one uniform
point each (``stratified=True``) or i.i.d. uniform lambda; ``antithetic=True`` pairs eps with -eps (2 score
evaluations per draw; it removes the 1/sqrt(v) blow-up of the Stein term near t_min, whose variance
would otherwise diverge logarithmically). The standard error is the spread of the per-draw estimates
over sqrt(num_samples) (conservative under stratification).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._checks import (
    batch_dot,
    bcast,
    check_int,
    check_key,
    check_nonfinite,
    check_per_sample,
    check_samples,
    check_score_fn,
    entry_point,
)
from .errors import InvalidArgument
from .processes import gaussian_log_prob


class Elbo(eqx.Module):
    """What ``dg.elbo`` returns: elbo (N,) in nats, its Monte-Carlo standard error (N,), and nfe (score
    evaluations per sample). Bits/dim: ``dg.bits_per_dim(result.elbo, shape)`` (an upper bound)."""

    elbo: Array
    stderr: Array
    nfe: Array


def elbo_integrand(score: Callable, process, x, t, eps, antithetic: bool):
    """Per-unit-lambda integrand sigma^2 div s + 1/2 sigma^2 |s|^2 - f D sigma^2 / g^2 at x_t = a x + sqrt(v) eps,
    with div s by Stein's identity (docs/math.md 10). x, eps (N, *shape); t (N,). Returns (N,)."""
    dtype = x.dtype
    t_min = jnp.asarray(process.t_min, dtype)
    c = process.coefficients(t)
    sigma = c.sigma
    a, v, _ = process.transition(t_min, t)
    sv = jnp.sqrt(jnp.maximum(v, 0.0))
    xa = bcast(a, x) * x
    if antithetic:  # +eps and -eps in one score call (one batch of 2N: one network in the compiled program)
        n = x.shape[0]
        both = score(jnp.concatenate([xa + bcast(sv, x) * eps, xa - bcast(sv, x) * eps]), jnp.concatenate([t, t]))
        s_p, s_m = both[:n], both[n:]
        stein = 0.5 * batch_dot(eps, s_p - s_m) / sv
        sq = 0.5 * (batch_dot(s_p, s_p) + batch_dot(s_m, s_m))
    else:
        s_p = score(xa + bcast(sv, x) * eps, t)
        stein = batch_dot(eps, s_p) / sv
        sq = batch_dot(s_p, s_p)
    d = math.prod(x.shape[1:])
    return sigma**2 * (stein + 0.5 * sq) - c.f * d * sigma**2 / c.g2


def log_snr_draws(process, key, m: int, n: int, dtype, stratified: bool) -> Array:
    """(M, N) draws of lambda, uniform on [lambda(t_max), lambda(t_min)] (one per stratum when ``stratified``),
    through ``log_snr_of_uniform``."""
    u = jax.random.uniform(key, (m, n), dtype)
    if stratified:
        u = (jnp.arange(m, dtype=dtype)[:, None] + u) / m
    return log_snr_of_uniform(process, u)


def log_snr_of_uniform(process, u: Array) -> Array:
    """lambda = lambda(t_min) - u (lambda(t_min) - lambda(t_max)) for u in [0, 1), kept a few ulps below
    lambda(t_min): there the kernel variance v rounds to 0 and the Stein term is 0/0 (u that small is drawn at
    M ~ 1e7 strata in float32); the strip left out is ~1e-5 of the range."""
    lam_hi = process.log_snr(jnp.asarray(process.t_min, u.dtype))
    lam_lo = process.log_snr(jnp.asarray(process.t_max, u.dtype))
    u_min = 64 * jnp.finfo(u.dtype).eps * jnp.maximum(1.0, jnp.abs(lam_hi)) / (lam_hi - lam_lo)
    return lam_hi - jnp.maximum(u, u_min) * (lam_hi - lam_lo)


@entry_point
def elbo(score: Callable, process, x: Float[Array, " N *shape"], *, key, num_samples: int,
         prior_log_prob: Callable | None = None,
         stratified: bool = True, antithetic: bool = True) -> Elbo:
    """ELBO of data ``x`` (N, *shape) at t_min (docs/math.md 10): a lower bound of log p^SDE_{t_min}(x), per sample.

    Args:
      score: ``score(x, t)`` with t scalar or (N,).
      process: the forward process.
      x: (N, *shape) data (finite), in the model's space ([-1, 1] for images).
      key: PRNG key (times and noise; one key reproduces the estimate).
      num_samples: M >= 1 time draws per sample (2M score evaluations with ``antithetic``).
      prior_log_prob: ``log p_T(x_T) -> (N,)``; default the standard prior N(0, sigma_T^2 I), whose term
        E[log N(x_T)] is then exact (closed form). With the exact p_T and the exact score the estimate is
        the exact log p_{t_min}(x) up to Monte-Carlo error.
      stratified: one uniform draw of lambda per stratum (default) or i.i.d. draws.
      antithetic: pair each eps with -eps (default).

    Returns: ``dg.Elbo`` (elbo (N,), stderr (N,), nfe). A NaN or inf score, or a prior that returns NaN or
    -inf, raises ``dg.NonFiniteError`` naming the term.
    """
    m = check_int(num_samples, "num_samples")
    if key is None:
        raise InvalidArgument("key: dg.elbo needs a PRNG key (key=jax.random.key(...)) for its Monte-Carlo draws")
    check_key(key)
    x = check_samples(x, "x")
    n, dtype, d = x.shape[0], x.dtype, math.prod(x.shape[1:])
    t_min, t_max = jnp.asarray(process.t_min, dtype), jnp.asarray(process.t_max, dtype)
    check_score_fn(score, x, t_min)
    lam_hi, lam_lo = process.log_snr(t_min), process.log_snr(t_max)
    k_u, k_eps, k_prior = jax.random.split(key, 3)
    lam = log_snr_draws(process, k_u, m, n, dtype, stratified)
    t = process.time_of_log_snr(lam)
    eps_keys = jax.random.split(k_eps, m)

    def body(_, inp):
        tj, kj = inp
        eps = jax.random.normal(kj, x.shape, dtype)
        return None, elbo_integrand(score, process, x, tj, eps, antithetic)

    _, h = jax.lax.scan(body, None, (t, eps_keys))  # (M, N)
    h = check_nonfinite(h, "dg.elbo: the score term (score(x_t, t) along the forward paths)")
    integral = (lam_hi - lam_lo) * h  # per-draw estimates of int ... dt
    a_T, v_T, _ = process.transition(t_min, t_max)
    if prior_log_prob is None:  # E[log N(a_T x + sqrt(v_T) eps; 0, sigma_T^2 I)], closed form
        prior = gaussian_log_prob(a_T**2 * batch_dot(x, x) + v_T * d, d, process.sigma(t_max) ** 2)
        prior = jnp.broadcast_to(prior, (m, n))
    else:
        def prior_body(_, kj):
            eps = jax.random.normal(kj, x.shape, dtype)
            xa, sv = a_T * x, jnp.sqrt(v_T)
            lp = check_per_sample(prior_log_prob(xa + sv * eps), n, "prior_log_prob(x_T)")
            if antithetic:
                lp = 0.5 * (lp + check_per_sample(prior_log_prob(xa - sv * eps), n, "prior_log_prob(x_T)"))
            return None, lp.astype(dtype)

        _, prior = jax.lax.scan(prior_body, None, jax.random.split(k_prior, m))
        prior = check_nonfinite(prior, "dg.elbo: the prior term prior_log_prob(x_T)")
    per_draw = prior - integral
    est = jnp.mean(per_draw, axis=0)
    se = jnp.std(per_draw, axis=0, ddof=1) / math.sqrt(m) if m > 1 else jnp.full((n,), jnp.inf, dtype)
    nfe = jnp.asarray((2 if antithetic else 1) * m)  # the prior term calls no score
    return Elbo(est, se, nfe)
