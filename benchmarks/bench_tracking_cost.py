"""What log-density tracking and density guidance add per step, and the reverse-SDE tracking schemes (issue 14).

1. Oracle D = 3072 and the shipped digits UNet, N = 64, 64 constant steps: tracked / untracked reverse SDE
   and DG-ODE / PF-ODE (Tsit5; tracked / untracked PF-ODE is in run_all.py), wall (best of interleaved rounds,
   and the median of the ratios taken within each round) and NFE; plus deterministic counts from the compiled
   program: elementwise ops on (N, D) arrays, erf_inv ops (the Gaussian draw) and bytes accessed per step.
2. A published-style tracked reverse SDE (Euler-Maruyama in ``lax.scan``, ``vmap``-ed per sample, the
   style of run_all.py's baseline) against ``dg.ReverseSDE()`` tracked at equal steps; the same loop
   untracked (the published code's own tracking cost); diffrax's UnsafeBrownianPath against the default
   per-step-key path (``dgjax/sampling/brownian.py``).
3. Tracking accuracy at about 1000 NFE (oracle, D = 256, 64 samples, 1 Rademacher probe): Euler-Maruyama,
   Stratonovich Heun, Milstein (docs/math.md 4(c)); correlation with the exact log p and mean |error| per dim.

    python benchmarks/bench_tracking_cost.py [--quick]

Wall ratios on a shared CPU are noisy (a few %; two compilations of the same program differ by up to 8% in
best-of time): read them with the HLO counts, which are exact.
"""

from __future__ import annotations

import argparse
import collections
import re

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

import dgjax as dg

try:
    from benchmarks._common import interleaved_rounds, paired_ratio
except ImportError:  # run as a script from benchmarks/
    from _common import interleaved_rounds, paired_ratio

P = dg.VP()


def hlo_counts(fn, *args):
    """(elementwise ops on arrays of the sample's shape, erf_inv ops, MB accessed per loop iteration) of the
    compiled program. The last is XLA's own cost analysis ("bytes accessed"), which counts a while loop's
    body once: for these memory-bound steps a deterministic measure of the work per step, free of the wall
    clock's noise."""
    x = args[0]
    compiled = fn.lower(*args).compile()
    txt = compiled.as_text()
    shape = ",".join(str(d) for d in x.shape)
    ops = collections.Counter(re.findall(r"= f32\[" + shape + r"\]\S* (\w[\w-]*)\(", txt))
    nd = sum(v for k, v in ops.items() if k not in ("parameter", "bitcast", "broadcast", "fusion", "copy",
                                                     "get-tuple-element"))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return nd, len(re.findall(r"%erf_inv\.\d+ = f32\[" + shape, txt)), float(cost["bytes accessed"]) / 1e6


def published_tracked_rsde(score, process, x_T, key, steps: int, logp_T, track: bool = True):
    """Published style: per-sample Euler-Maruyama of (x, log p) (docs/math.md 4(c)) in lax.scan, vmapped over samples
    (``track=False``: the same loop without the log-density, the published code's own untracked cost)."""
    ts = jnp.linspace(process.t_max, process.t_min, steps + 1).astype(x_T.dtype)

    def one(x, k):
        def step(carry, inp):
            z, lp = carry
            (t0, t1), kk = inp
            _, _, f, g2 = process.coefficients(t0)
            s = score(z[None], t0)[0]
            dtau = t0 - t1
            dw = jnp.sqrt(dtau) * jax.random.normal(kk, z.shape, z.dtype)
            g = jnp.sqrt(g2)
            z1 = z + (-f * z + g2 * s) * dtau + g * dw
            if track:
                lp = lp + (f * z.size + 0.5 * g2 * jnp.sum(s * s)) * dtau + g * jnp.sum(s * dw)
            return (z1, lp), None

        (z1, lp1), _ = jax.lax.scan(step, (x, jnp.zeros((), x.dtype)), ((ts[:-1], ts[1:]), jax.random.split(k, steps)))
        return z1, lp1

    x1, dlp = jax.vmap(one)(x_T, jax.random.split(key, x_T.shape[0]))
    return x1, logp_T + dlp


def cost_rows(score, x_T, label, steps, repeats):
    key = jax.random.key(3)

    def run(sampler=None, track=False, **kw):
        return jax.jit(lambda x, k: dg.sample(score, P, x, sampler=sampler, key=k, track_logp=track, **kw))

    fns = {"rsde": run(dg.ReverseSDE(), steps=steps), "rsde_track": run(dg.ReverseSDE(), True, steps=steps),
           "pf": run(solver=dfx.Tsit5(), steps=steps),
           "dg": run(dg.DensityGuidance(0.6), solver=dfx.Tsit5(), steps=steps)}
    lp_T = P.prior_log_prob(x_T)
    fns["published_rsde_track"] = jax.jit(lambda x, k: published_tracked_rsde(score, P, x, k, steps, lp_T))
    fns["published_rsde"] = jax.jit(lambda x, k: published_tracked_rsde(score, P, x, k, steps, lp_T, track=False))
    fns["rsde_unsafe"] = run(dg.ReverseSDE(brownian="unsafe"), steps=steps)
    outs, times = interleaved_rounds({k: (f, (x_T, key)) for k, f in fns.items()}, repeats)
    best = {k: min(v) for k, v in times.items()}
    hlo = {k: hlo_counts(fns[k], x_T, key) for k in fns}
    nfe = {k: (steps if k.startswith("published") else int(o.nfe)) for k, o in outs.items()}
    rows = []
    for name, a, b in (("reverse SDE untracked -> tracked", "rsde", "rsde_track"),
                       ("PF-ODE -> DG-ODE (q=0.6)", "pf", "dg"),
                       ("published-style tracked RSDE -> dgjax", "published_rsde_track", "rsde_track"),
                       ("published-style RSDE untracked -> tracked", "published_rsde", "published_rsde_track"),
                       ("published-style untracked RSDE -> dgjax", "published_rsde", "rsde"),
                       ("RSDE UnsafeBrownianPath -> default path", "rsde_unsafe", "rsde")):
        rows.append(dict(comparison=name, setting=label, nfe_a=nfe[a], nfe_b=nfe[b], nfe_ratio=nfe[b] / nfe[a],
                         wall_a=best[a], wall_b=best[b], wall_ratio=best[b] / best[a],
                         wall_ratio_median=paired_ratio(times, a, b), bytes_ratio=hlo[b][2] / hlo[a][2],
                         err_a=None, err_b=None))
    print(f"\n[{label}] N = {x_T.shape[0]}, {steps} constant steps; HLO (N, D) elementwise ops / erf_inv ops / MB "
          f"accessed per step: " + ", ".join(f"{k} {v[0]} / {v[1]} / {v[2]:.1f}" for k, v in hlo.items()))
    for r in rows:
        print(f"  {r['comparison']:<40} NFE {r['nfe_a']:>5} -> {r['nfe_b']:>5} ({r['nfe_ratio']:.2f})  "
              f"wall {r['wall_a']:.3f} -> {r['wall_b']:.3f} s ({r['wall_ratio']:.3f}; median of paired rounds "
              f"{r['wall_ratio_median']:.3f}; bytes per step {r['bytes_ratio']:.3f})")
    return rows


def accuracy_rows(dim=256, n=64, nfe=1000):
    gm = dg.random_mixture(jax.random.key(0), 5, (dim,), mean_scale=0.5, var_range=(0.01, 0.2))
    score, lp = gm.score(P), gm.log_prob(P)
    x_T = gm.sample_t(jax.random.key(1), n, P, P.t_max)
    configs = [("Euler-Maruyama (Ito)", dg.ReverseSDE(), nfe),
               ("Stratonovich Heun", dg.ReverseSDE(scheme="stratonovich"), nfe // 4),  # 2 evals x (1 + 1 JVP)
               # 1 + 1 JVP (Lap) + 1 (H dW)
               ("Milstein (docs/math.md 4(c))", dg.ReverseSDE(scheme="milstein"), nfe // 3)]
    print(f"\n[reverse-SDE tracking at ~{nfe} NFE] oracle D = {dim}, {n} samples, exact score, 1 Rademacher probe")
    rows = []
    for name, sampler, steps in configs:
        out = dg.sample(score, P, x_T, sampler=sampler, key=jax.random.key(2), steps=steps, track_logp=True,
                        logp_T=lp(x_T, P.t_max))
        exact = lp(out.x, P.t_min)
        corr = float(np.corrcoef(out.logp, exact)[0, 1])
        err = float(jnp.mean(jnp.abs(out.logp - exact))) / dim
        rows.append(dict(scheme=name, steps=steps, nfe=int(out.nfe), corr=corr, err_per_dim=err))
        print(f"  {name:<24} {steps:>5} steps {int(out.nfe):>5} NFE  corr {corr:.4f}  |err|/dim {err:.4f}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"backend: {jax.default_backend()}")
    repeats = 2 if args.quick else args.repeats
    shape = (3, 8, 8) if args.quick else (3, 32, 32)
    gm = dg.random_mixture(jax.random.key(0), 5, shape, mean_scale=0.5, var_range=(1e-3, 0.1))
    n = 8 if args.quick else 64
    rows = cost_rows(gm.score(P), P.prior_sample(jax.random.key(1), (n,) + shape), f"oracle D={gm.dim}",
                     8 if args.quick else 64, repeats)
    if not args.quick:
        model = dg.load_model("digits")
        rows += cost_rows(model.score, model.prior_sample(jax.random.key(2), 64), f"digits UNet D={model.dim}", 64,
                          max(2, repeats // 2))
    acc = accuracy_rows(dim=32, n=16, nfe=120) if args.quick else accuracy_rows()
    return rows, acc


if __name__ == "__main__":
    main()
