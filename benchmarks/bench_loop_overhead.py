"""Is diffrax's loop an overhead for constant-step reverse-SDE sampling, and what does the Brownian path cost?
(issue 14, item 2)

Oracle D = 3072 (the run_all mixture), N = 64, 64 Euler-Maruyama steps, same score, interleaved rounds: a
batched ``lax.scan`` loop drawing step i's noise from ``fold_in(key, i)`` or from ``split(key, steps)[i]``; a
plain ``diffrax.diffeqsolve`` (Euler, ConstantStepSize) with diffrax's ``UnsafeBrownianPath`` or dgjax's
``StepBrownianPath``; the published-style per-sample loop (``vmap`` of a ``lax.scan``, keys split per sample
and step), untracked and tracked; ``dg.sample`` with ``dg.ReverseSDE()`` on the unsafe path, and on the
default path untracked and tracked. Each line gives the best time and, against dgjax untracked, the ratio
of the bests and the median of the ratios taken within each round.

    python benchmarks/bench_loop_overhead.py [--repeats 20]

Measured 2026-12-04 on the quiet 2-core CPU (20 rounds), best ms: scan fold_in 121, scan split keys 95,
diffrax Unsafe 117, diffrax step path 99, published-style 107 (tracked 103), dgjax unsafe path 126, dgjax
default untracked 117 (tracked 114). What holds up across runs: a pre-split key per step is 15-20% faster
than a key derived inside the step (JAX lowers threefry to a rolled loop on the CPU, and UnsafeBrownianPath
runs three scalar ones per step before the (N, D) draw), so it is dgjax's default; diffrax's loop itself
costs nothing over a scan. Ratios nearer 1 than about 10% are below this machine's resolution: best and
median-of-paired ratios of the same pair differ by up to 0.13 between runs, and two compilations of the
same program differ by up to 8%.
"""

from __future__ import annotations

import argparse
import warnings

import diffrax as dfx
import jax
import jax.numpy as jnp

import dgjax as dg
from dgjax.sampling.brownian import brownian_path

try:
    from benchmarks._common import interleaved_rounds, paired_ratio
    from benchmarks.bench_tracking_cost import published_tracked_rsde
except ImportError:  # run as a script from benchmarks/
    from _common import interleaved_rounds, paired_ratio
    from bench_tracking_cost import published_tracked_rsde

P = dg.VP()


def scan_em(score, steps, split_keys=False):
    """Batched Euler-Maruyama in lax.scan; step i's noise from fold_in(key, i) or (split_keys) split(key)[i]."""
    ts = jnp.linspace(P.t_max, P.t_min, steps + 1)

    def run(x, key):
        keys = jax.random.split(key, steps)

        def step(z, i):
            t0, t1 = ts[i], ts[i + 1]
            _, _, f, g2 = P.coefficients(t0)
            k = keys[i] if split_keys else jax.random.fold_in(key, i)
            dw = jax.random.normal(k, z.shape, z.dtype) * jnp.sqrt(t0 - t1)
            return z + (g2 * score(z, t0) - f * z) * (t0 - t1) + jnp.sqrt(g2) * dw, None

        return jax.lax.scan(step, x, jnp.arange(steps))[0]

    return run


def diffrax_em(score, steps, step_path=False):
    """A plain diffeqsolve (Euler, ConstantStepSize) with diffrax's UnsafeBrownianPath or (step_path) dgjax's
    StepBrownianPath."""
    span = P.t_max - P.t_min

    def drift(tau, y, _):
        _, _, f, g2 = P.coefficients(P.t_max - tau)
        return g2 * score(y, P.t_max - tau) - f * y

    def diffusion(tau, y, _):
        return jnp.sqrt(P.coefficients(P.t_max - tau)[3])

    def run(x, key):
        path = (brownian_path("steps", key, x.shape, x.dtype, span, steps) if step_path else
                dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(x.shape, x.dtype), key=key))
        with warnings.catch_warnings():  # WeaklyDiagonalControlTerm is deprecated in favour of lineax operators
            warnings.simplefilter("ignore")
            terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.WeaklyDiagonalControlTerm(diffusion, path))
        return dfx.diffeqsolve(terms, dfx.Euler(), 0.0, span, dt0=span / steps, y0=x, max_steps=steps,
                               adjoint=dfx.ForwardMode()).ys[0]

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="D = 192, N = 8, 8 steps")
    args = ap.parse_args(argv)
    shape, n, steps = ((3, 8, 8), 8, 8) if args.quick else ((3, 32, 32), 64, 64)
    gm = dg.random_mixture(jax.random.key(0), 5, shape, mean_scale=0.5, var_range=(1e-3, 0.1))
    score = gm.score(P)
    x = P.prior_sample(jax.random.key(5), (n,) + shape)
    key = jax.random.key(3)
    def sample(track, brownian="auto"):
        sampler = dg.ReverseSDE(brownian=brownian)
        return jax.jit(lambda x, k: dg.sample(score, P, x, sampler=sampler, key=k, steps=steps, track_logp=track).x)

    lp_T = P.prior_log_prob(x)
    fns = {"lax.scan": jax.jit(scan_em(score, steps)), "lax.scan split keys": jax.jit(scan_em(score, steps, True)),
           "diffrax": jax.jit(diffrax_em(score, steps)), "diffrax step path": jax.jit(diffrax_em(score, steps, True)),
           "published-style": jax.jit(lambda x, k: published_tracked_rsde(score, P, x, k, steps, lp_T, track=False)[0]),
           "dgjax unsafe path": sample(False, "unsafe"), "dgjax untracked": sample(False),
           "dgjax tracked": sample(True),
           "published tracked": jax.jit(lambda x, k: published_tracked_rsde(score, P, x, k, steps, lp_T)[0])}
    _, times = interleaved_rounds({k: (f, (x, key)) for k, f in fns.items()}, args.repeats)
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:<20} {v * 1e3:8.1f} ms  ({v / best['lax.scan']:.3f}x the scan; vs dgjax untracked: best "
              f"{v / best['dgjax untracked']:.3f}, median of paired rounds "
              f"{paired_ratio(times, 'dgjax untracked', k):.3f})")
    return best


if __name__ == "__main__":
    main()
