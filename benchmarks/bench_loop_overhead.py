"""Is diffrax's loop an overhead for constant-step reverse-SDE sampling? (issue 14, item 2)

Oracle D = 3072 (the run_all mixture), N = 64, 64 Euler-Maruyama steps, same score, best of interleaved rounds:
a batched ``lax.scan`` loop, a plain ``diffrax.diffeqsolve`` (Euler, UnsafeBrownianPath, ConstantStepSize),
and ``dg.sample`` with ``dg.ReverseSDE()`` untracked and tracked.

    python benchmarks/bench_loop_overhead.py [--repeats 10]

Measured 2026-12-04 on the quiet 2-core CPU: scan 122 ms, diffrax 112 ms, dgjax untracked 117 ms, tracked
139 ms: the loop costs nothing over a scan; what tracking adds is its own pass over (N, D). Repeated runs of
identical programs move by up to 8% on this CPU, so read ratios near 1 with that resolution.
"""

from __future__ import annotations

import argparse
import warnings

import diffrax as dfx
import jax
import jax.numpy as jnp

import dgjax as dg

try:
    from benchmarks._common import interleaved_best
except ImportError:  # run as a script from benchmarks/
    from _common import interleaved_best

P = dg.VP()


def scan_em(score, steps):
    ts = jnp.linspace(P.t_max, P.t_min, steps + 1)

    def run(x, key):
        def step(z, i):
            t0, t1 = ts[i], ts[i + 1]
            _, _, f, g2 = P.coefficients(t0)
            dw = jax.random.normal(jax.random.fold_in(key, i), z.shape, z.dtype) * jnp.sqrt(t0 - t1)
            return z + (g2 * score(z, t0) - f * z) * (t0 - t1) + jnp.sqrt(g2) * dw, None

        return jax.lax.scan(step, x, jnp.arange(steps))[0]

    return run


def diffrax_em(score, steps):
    span = P.t_max - P.t_min

    def drift(tau, y, _):
        _, _, f, g2 = P.coefficients(P.t_max - tau)
        return g2 * score(y, P.t_max - tau) - f * y

    def diffusion(tau, y, _):
        return jnp.sqrt(P.coefficients(P.t_max - tau)[3])

    def run(x, key):
        path = dfx.UnsafeBrownianPath(shape=jax.ShapeDtypeStruct(x.shape, x.dtype), key=key)
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
    sample = lambda track: jax.jit(lambda x, k: dg.sample(score, P, x, sampler=dg.ReverseSDE(), key=k,  # noqa: E731
                                                          steps=steps, track_logp=track).x)
    fns = {"lax.scan": jax.jit(scan_em(score, steps)), "diffrax": jax.jit(diffrax_em(score, steps)),
           "dgjax untracked": sample(False), "dgjax tracked": sample(True)}
    _, best = interleaved_best({k: (f, (x, key)) for k, f in fns.items()}, args.repeats)
    for k, v in best.items():
        print(f"{k:<16} {v * 1e3:8.1f} ms  ({v / best['lax.scan']:.3f}x the scan)")
    return best


if __name__ == "__main__":
    main()
