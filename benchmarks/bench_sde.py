"""Stochastic sampling costs and accuracy, side by side in one run.

1. Tracked vs untracked reverse SDE (Euler-Maruyama): NFE and wall-time ratios, on the oracle in D = 3072
   and on a small Flax MLP (D = 3072).
2. DG-SDE vs DG-ODE: cost per step, and per Hutchinson probe.
3. Brownian paths under fixed steps: diffrax's VirtualBrownianTree vs UnsafeBrownianPath.
4. Reverse-SDE log-density tracking error against NFE for each scheme (D = 256, 64 samples, exact score):
   Euler-Maruyama (Ito, free) and the Stratonovich form with Heun / Midpoint (Hutchinson Laplacian).

    python benchmarks/bench_sde.py [--quick]
"""

from __future__ import annotations

import argparse

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

import dgjax as dg

try:
    from benchmarks._common import small_flax_score, timed
except ImportError:  # run as a script from benchmarks/
    from _common import small_flax_score, timed

P = dg.VP()


def _sampler_fn(score, sampler, steps, track, **kw):
    return jax.jit(lambda x, k: dg.sample(score, P, x, sampler=sampler, key=k, steps=steps, track_logp=track, **kw))


def cost_table(score, x_T, steps, label):
    key = jax.random.key(1)
    noise = dg.noise_window_log_snr(P, 0.3, -3.0, 9.0)
    rows = {}
    configs = {
        "reverse SDE": (dg.ReverseSDE(), False, {}),
        "reverse SDE, tracked": (dg.ReverseSDE(), True, {}),
        "DG-ODE (Euler)": (dg.DensityGuidance(0.5), False, dict(solver=dfx.Euler())),
        "DG-SDE, 1 probe": (dg.StochasticDensityGuidance(0.5, noise), False, {}),
        "DG-SDE, 4 probes": (dg.StochasticDensityGuidance(0.5, noise), False, dict(divergence=dg.Hutchinson(4))),
        "DG-SDE exact, 1 probe": (dg.StochasticDensityGuidance(0.5, noise, exact=True), False, {}),
        "reverse SDE, VirtualBrownianTree": (dg.ReverseSDE(brownian="virtual"), False, {}),
    }
    for name, (sampler, track, kw) in configs.items():
        out, wall = timed(_sampler_fn(score, sampler, steps, track, **kw), x_T, key)
        rows[name] = (int(out.nfe), wall)
    base_n, base_t = rows["reverse SDE"]
    print(f"\n[{label}] {steps} steps, batch {x_T.shape[0]}, D = {x_T[0].size}")
    print(f"{'configuration':<36} {'NFE':>6} {'NFE ratio':>9} {'wall s':>8} {'wall ratio':>10}")
    for name, (n, t) in rows.items():
        print(f"{name:<36} {n:>6d} {n / base_n:>9.2f} {t:>8.3f} {t / base_t:>10.3f}")
    tr = rows["reverse SDE, tracked"][1] / base_t
    ode_n, ode_t = rows["DG-ODE (Euler)"]
    p1, p4 = rows["DG-SDE, 1 probe"], rows["DG-SDE, 4 probes"]
    print(f"tracked/untracked reverse SDE: NFE {rows['reverse SDE, tracked'][0] / base_n:.2f}, wall {tr:.3f}")
    print(f"DG-SDE/DG-ODE per step: NFE {p1[0] / ode_n:.2f}, wall {p1[1] / ode_t:.3f}; "
          f"each extra probe adds {(p4[1] - p1[1]) / 3 / ode_t:.3f} of a DG-ODE step")
    print(f"VirtualBrownianTree/UnsafeBrownianPath: wall {rows['reverse SDE, VirtualBrownianTree'][1] / base_t:.2f}")
    return rows


def accuracy_table(step_counts=(250, 1000, 4000), strat_steps=(125, 250, 500), dim=256, n=64):
    gm = dg.random_mixture(jax.random.key(0), 5, (dim,), mean_scale=0.5, var_range=(0.01, 0.2))
    score, lp = gm.score(P), gm.log_prob(P)
    x_T = gm.sample_t(jax.random.key(1), n, P, P.t_max)
    configs = [(f"Ito Euler-Maruyama, {s} steps", dg.ReverseSDE(), None, s) for s in step_counts]
    configs += [(f"Stratonovich Heun, {s} steps", dg.ReverseSDE(scheme="stratonovich"), dfx.Heun(), s)
                for s in strat_steps]
    configs += [(f"Stratonovich Midpoint, {s} steps", dg.ReverseSDE(scheme="stratonovich"), dfx.Midpoint(), s)
                for s in strat_steps[1:2]]
    print(f"\n[reverse-SDE tracking accuracy] oracle, D = {dim}, batch {n}, exact score, 1 Rademacher probe")
    print(f"{'scheme':<36} {'NFE':>6} {'corr':>8} {'|err|/dim':>10} {'mean err/dim':>12}")
    rows = []
    for name, sampler, solver, steps in configs:
        out = dg.sample(score, P, x_T, sampler=sampler, solver=solver, key=jax.random.key(2), steps=steps,
                        track_logp=True, logp_T=lp(x_T, P.t_max))
        exact = lp(out.x, P.t_min)
        err = out.logp - exact
        corr = float(np.corrcoef(out.logp, exact)[0, 1])
        rows.append((name, int(out.nfe), corr, float(jnp.mean(jnp.abs(err))) / dim, float(jnp.mean(err)) / dim))
        print(f"{name:<36} {rows[-1][1]:>6d} {corr:>8.4f} {rows[-1][3]:>10.4f} {rows[-1][4]:>12.4f}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print(f"backend: {jax.default_backend()}")
    steps = 20 if args.quick else 200
    n = 4 if args.quick else 16
    gm = dg.random_mixture(jax.random.key(0), 5, (3, 32, 32), mean_scale=0.5, var_range=(1e-3, 0.1))
    cost_table(gm.score(P), P.prior_sample(jax.random.key(2), (n, 3, 32, 32)), steps, "oracle")
    cost_table(small_flax_score(P, 3072), P.prior_sample(jax.random.key(2), (n, 3072)), steps, "Flax MLP")
    if args.quick:
        accuracy_table(step_counts=(50, 200), strat_steps=(25, 50), dim=32, n=16)
    else:
        accuracy_table()


if __name__ == "__main__":
    main()
