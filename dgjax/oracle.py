"""The exact oracle: diagonal Gaussian mixtures (docs/math.md section 8).

For ``p_0 = sum_k w_k N(mu_k, diag(v_k))`` every marginal of a process is again a mixture,

    p_t = sum_k w_k N(alpha_t mu_k, diag(c_k)),   c_k = alpha_t^2 v_k + sigma_t^2,

so with the per-component scores ``g_k = -(x - alpha_t mu_k) / c_k`` and responsibilities
``r_k = softmax_k(log w_k + log N_k(x))`` (computed with logsumexp, stable in any D):

    log p_t(x) = logsumexp_k (log w_k + log N_k(x))
    s(x)       = sum_k r_k g_k
    H v        = sum_k r_k [g_k (g_k . v) - v / c_k] - s (s . v)
    Lap        = sum_k r_k [|g_k|^2 - sum_i 1 / c_ki] - |s|^2
    tr(H^2)    = sum_ij H_ij^2        (exact, via the K x K Gram structure; see ``trace_hessian_sq``)

All functions take batched ``x`` of shape (N, *shape) and ``t`` scalar or (N,). The mixture is an
``equinox.Module`` whose arrays are pytree leaves, so gradients flow to its means and variances.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array

from ._checks import check_finite, check_param
from .errors import InvalidArgument


class GaussianMixture(eqx.Module):
    """``sum_k w_k N(mu_k, diag(v_k))`` on events of any shape.

    Args:
      weights: (K,) positive mixture weights (normalised internally).
      means: (K, *shape) component means.
      variances: (K, *shape) per-dimension variances, or (K,) one isotropic variance per component.
    """

    log_weights: Array
    means: Array
    variances: Array
    shape: tuple = eqx.field(static=True)

    def __init__(self, weights, means, variances):
        weights, means, variances = jnp.asarray(weights), jnp.asarray(means), jnp.asarray(variances)
        if not jnp.issubdtype(means.dtype, jnp.floating):
            means = means.astype(float)
        dtype = means.dtype
        check_param(weights.ndim == 1, "weights", f"must have shape (K,); got {weights.shape}")
        k = weights.shape[0]
        check_param(means.ndim >= 2 and means.shape[0] == k, "means",
                    f"must have shape (K, *shape) with K = {k} (from weights); got {means.shape}")
        if variances.ndim == 1:
            check_param(variances.shape == (k,), "variances",
                        f"must have shape (K,) or (K, *shape); got {variances.shape}")
            variances = jnp.broadcast_to(jnp.reshape(variances, (k,) + (1,) * (means.ndim - 1)), means.shape)
        check_param(variances.shape == means.shape, "variances",
                    f"must have shape (K,) or {means.shape} like means; got {variances.shape}")
        means = check_finite(means, "means")  # a NaN mean would make every score and log p NaN
        if not isinstance(weights, jax.core.Tracer):
            check_param(bool(jnp.all(weights > 0)), "weights", "must all be positive")
        if not isinstance(variances, jax.core.Tracer):
            check_param(bool(jnp.all(variances > 0)), "variances", "must all be positive")
        self.log_weights = jax.nn.log_softmax(jnp.log(weights.astype(dtype)))
        self.means = means
        self.variances = variances.astype(dtype)
        self.shape = tuple(means.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # -- core: per-component quantities at (x, t) ---------------------------------------------------
    def _components(self, process, x, t):
        """Flattened per-component terms: g (N, K, D), inv_c (N?, K, D), log-joint (N, K)."""
        n = x.shape[0]
        if x.shape[1:] != self.shape:
            raise InvalidArgument(f"x has event shape {x.shape[1:]}, but the mixture's is {self.shape}; "
                                  f"pass x of shape (N, *{self.shape})")
        xf = jnp.reshape(x, (n, 1, -1))
        t = jnp.asarray(t, dtype=x.dtype)
        a, s = process.alpha(t), process.sigma(t)
        a = jnp.reshape(a, (-1, 1, 1))  # (1 or N, 1, 1)
        s = jnp.reshape(s, (-1, 1, 1))
        mu = jnp.reshape(self.means, (1, self.num_components, -1)).astype(x.dtype)
        v = jnp.reshape(self.variances, (1, self.num_components, -1)).astype(x.dtype)
        c = a**2 * v + s**2
        inv_c = 1.0 / c
        diff = xf - a * mu
        g = -diff * inv_c
        log_norm = -0.5 * jnp.sum(jnp.log(2 * jnp.pi * c) + diff * diff * inv_c, axis=-1)
        log_joint = self.log_weights.astype(x.dtype)[None, :] + log_norm  # (N, K)
        return g, inv_c, log_joint

    def _score_flat(self, process, x, t):
        g, inv_c, log_joint = self._components(process, x, t)
        r = jax.nn.softmax(log_joint, axis=-1)
        s = jnp.einsum("nk,nkd->nd", r, g)
        return g, inv_c, log_joint, r, s

    # -- public oracle functions -------------------------------------------------------------------
    def _log_prob_at(self, process, x, t):
        return logsumexp(self._components(process, x, t)[2], axis=-1)

    def _score_at(self, process, x, t):
        return jnp.reshape(self._score_flat(process, x, t)[4], x.shape)

    def log_prob(self, process):
        """fn(x (N, *shape), t) -> log p_t(x) (N,); a pytree (``eqx.Partial``) whose leaves are the mixture's."""
        return eqx.Partial(GaussianMixture._log_prob_at, self, process)

    def score(self, process):
        """fn(x, t) -> grad log p_t(x), like x; a pytree (``eqx.Partial``) whose leaves are the mixture's
        arrays, so gradients with respect to means and variances flow through every solve and adjoint."""
        return eqx.Partial(GaussianMixture._score_at, self, process)

    def hvp(self, process):
        """fn(x, t, v) -> H v with H the Hessian of log p_t at x; v like x."""

        def fn(x, t, v):
            g, inv_c, _, r, s = self._score_flat(process, x, t)
            vf = jnp.reshape(v, (x.shape[0], 1, -1))
            gv = jnp.sum(g * vf, axis=-1)  # (N, K)
            hv = jnp.einsum("nk,nkd->nd", r, g * gv[..., None] - vf * inv_c)
            hv = hv - s * jnp.sum(s * vf[:, 0], axis=-1, keepdims=True)
            return jnp.reshape(hv, x.shape)

        return fn

    def laplacian(self, process):
        """fn(x, t) -> Lap log p_t(x) = tr H (N,)."""

        def fn(x, t):
            g, inv_c, _, r, s = self._score_flat(process, x, t)
            inv_c = jnp.broadcast_to(inv_c, g.shape)
            per_k = jnp.sum(g * g, axis=-1) - jnp.sum(inv_c, axis=-1)
            return jnp.sum(r * per_k, axis=-1) - jnp.sum(s * s, axis=-1)

        return fn

    def trace_hessian_sq(self, process):
        """fn(x, t) -> tr(H^2) (N,), exact.

        H = sum_k r_k g_k g_k^T - s s^T - diag(e) = G M G^T - diag(e), with the columns of G the g_k,
        M = diag(r) - r r^T (since s = G r) and e = sum_k r_k / c_k. With A = G^T G, B = G^T diag(e) G:
        tr(H^2) = tr((M A)^2) - 2 tr(M B) + |e|^2, all K x K (cheap in any D).
        """

        def fn(x, t):
            g, inv_c, _, r, s = self._score_flat(process, x, t)
            e = jnp.einsum("nk,nkd->nd", r, jnp.broadcast_to(inv_c, g.shape))  # (N, D)
            m = jax.vmap(jnp.diag)(r) - r[:, :, None] * r[:, None, :]  # (N, K, K)
            a = jnp.einsum("nkd,njd->nkj", g, g)
            b = jnp.einsum("nkd,nd,njd->nkj", g, e, g)
            ma = m @ a
            return (jnp.einsum("nij,nji->n", ma, ma) - 2.0 * jnp.einsum("nij,nji->n", m, b)
                    + jnp.sum(e * e, axis=-1))

        return fn

    def div_pf_drift(self, process):
        """fn(x, t) -> exact div u = f D - 1/2 g^2 Lap of the PF-ODE drift (N,)."""
        lap = self.laplacian(process)

        def fn(x, t):
            _, _, f, g2 = process.coefficients_like(t, x)
            return f * self.dim - 0.5 * g2 * lap(x, t)

        return fn

    # -- sampling ------------------------------------------------------------------------------------
    def sample(self, key, n: int):
        """Draw n samples from p_0: (n, *shape)."""
        kc, kn = jax.random.split(key)
        comp = jax.random.categorical(kc, self.log_weights, shape=(n,))
        eps = jax.random.normal(kn, (n,) + self.shape, dtype=self.means.dtype)
        return self.means[comp] + jnp.sqrt(self.variances[comp]) * eps

    def sample_t(self, key, n: int, process, t):
        """Draw n samples from the marginal p_t: x_t = alpha_t x_0 + sigma_t eps."""
        k0, k1 = jax.random.split(key)
        x0 = self.sample(k0, n)
        t = jnp.asarray(t, dtype=x0.dtype)
        a, s = process.alpha(t), process.sigma(t)
        a = jnp.reshape(a, jnp.shape(a) + (1,) * len(self.shape))
        s = jnp.reshape(s, jnp.shape(s) + (1,) * len(self.shape))
        return a * x0 + s * jax.random.normal(k1, x0.shape, dtype=x0.dtype)


def random_mixture(key, num_components: int, shape, *, mean_scale: float = 1.0,
                   var_range=(0.01, 0.3), dtype=jnp.float32) -> GaussianMixture:
    """A random diagonal mixture for tests and benchmarks: means ~ N(0, mean_scale^2), per-dimension
    variances log-uniform in ``var_range``, weights ~ Dirichlet(2)."""
    kw, km, kv = jax.random.split(key, 3)
    shape = tuple(shape)
    w = jax.random.dirichlet(kw, 2.0 * jnp.ones(num_components))
    mu = mean_scale * jax.random.normal(km, (num_components,) + shape, dtype=dtype)
    lo, hi = math.log(var_range[0]), math.log(var_range[1])
    v = jnp.exp(jax.random.uniform(kv, (num_components,) + shape, dtype=dtype, minval=lo, maxval=hi))
    return GaussianMixture(w.astype(dtype), mu, v)
