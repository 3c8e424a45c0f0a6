"""Log p error against NFE for each step grid x {Euler, Heun} x process: chooses each process's default grid.

Oracle part: a 4-component Gaussian mixture in D = 64 (float64, exact divergence), PF-ODE sampling with the
log-density tracked from the exact log p_T(x_T); error = mean over samples of |tracked - exact log p_{t_min}|
/ D in nats per dimension (the discretisation error alone).

Galaxy part (``--galaxy``, needs ``dgjax[galaxies]``): galaxies-hsc32 (D = 1024, float32, one fixed
Rademacher probe shared by every configuration), error against the same probe's adaptive Tsit5 solve at
rtol = atol = 1e-5 (the reference), per dimension.

The default grid of a process is the grid with the smallest Heun error at the middle step count (ties:
the simpler grid, "t" first). Run:

    python benchmarks/bench_grids.py [--steps 16 64 256] [--num-samples 8] [--galaxy] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import diffrax as dfx
import jax
import jax.numpy as jnp

import dgjax as dg

SOLVERS = {"Euler": dfx.Euler, "Heun": dfx.Heun}


def oracle_processes():
    return [dg.VP(), dg.VPLinear(), dg.VPCosine(), dg.VE(), dg.EDM(), dg.LinearFlow(), dg.VPSDE(1.0, 1.0, 10.0)]


def oracle_rows(steps_list, num_samples=8, dim=64, seed=0):
    rows = []
    with jax.enable_x64(True):
        gm = dg.random_mixture(jax.random.key(seed), 4, (dim,), dtype=jnp.float64)
        for process in oracle_processes():
            score, log_prob = gm.score(process), gm.log_prob(process)
            x_T = process.prior_sample(jax.random.key(seed + 1), (num_samples, dim)).astype(jnp.float64)
            lp_T = log_prob(x_T, process.t_max)
            for grid in dg.GRIDS:
                for sname, solver in SOLVERS.items():
                    for steps in steps_list:
                        t0 = time.perf_counter()
                        out = dg.sample(score, process, x_T, track_logp=True, logp_T=lp_T, divergence=dg.Exact(),
                                        solver=solver(), steps=steps, grid=grid)
                        err = float(jnp.mean(jnp.abs(out.logp - log_prob(out.x, process.t_min)))) / dim
                        rows.append(dict(model="oracle D=64", process=process_name(process), grid=grid, solver=sname,
                                         steps=steps, nfe=int(out.nfe), err=err, wall=time.perf_counter() - t0))
    return rows


def process_name(p):
    if isinstance(p, dg.VPSDE):
        return f"VPSDE({p.beta_min:g},{p.beta_max:g},{p.T:g})"
    return type(p).__name__


def galaxy_rows(steps_list, num_samples=4, seed=0):
    model = dg.load_model("galaxies-hsc32")
    process, score = model.process, model.score
    shape = model.shape
    x_T = process.prior_sample(jax.random.key(seed + 1), (num_samples,) + tuple(shape))
    key = jax.random.key(seed + 2)
    d = math.prod(shape)
    t0 = time.perf_counter()
    ref = dg.sample(score, process, x_T, key=key, track_logp=True, rtol=1e-5, atol=1e-5)
    rows = [dict(model="galaxies-hsc32", process="VPSDE(1,1,10)", grid="adaptive", solver="Tsit5 1e-5",
                 steps=int(ref.num_steps), nfe=int(ref.nfe), err=0.0, wall=time.perf_counter() - t0)]
    for grid in dg.GRIDS:
        for sname, solver in SOLVERS.items():
            for steps in steps_list:
                t0 = time.perf_counter()
                out = dg.sample(score, process, x_T, key=key, track_logp=True, solver=solver(), steps=steps, grid=grid)
                err = float(jnp.mean(jnp.abs(out.logp - ref.logp))) / d
                rows.append(dict(model="galaxies-hsc32", process="VPSDE(1,1,10)", grid=grid, solver=sname,
                                 steps=steps, nfe=int(out.nfe), err=err, wall=time.perf_counter() - t0))
    return rows, float(jnp.mean(ref.logp))


def print_table(rows):
    print(f"{'model':<15} {'process':<16} {'grid':<8} {'solver':<10} {'steps':>5} {'NFE':>6} {'|err|/dim':>10} "
          f"{'wall s':>7}")
    for r in rows:
        print(f"{r['model']:<15} {r['process']:<16} {r['grid']:<8} {r['solver']:<10} {r['steps']:>5d} {r['nfe']:>6d} "
              f"{r['err']:>10.2e} {r['wall']:>7.1f}")


def choose_defaults(rows, steps):
    """Per (model, process): the grid with the smallest Heun error at ``steps`` (ties within 10%: "t" first)."""
    out = {}
    for key in sorted({(r["model"], r["process"]) for r in rows if r["grid"] in dg.GRIDS}):
        cand = {r["grid"]: r["err"] for r in rows
                if (r["model"], r["process"]) == key and r["solver"] == "Heun" and r["steps"] == steps}
        best = min(cand.values())
        out[key] = next(g for g in dg.GRIDS if cand[g] <= 1.1 * best)
        print(f"default for {key[1]:<16} on {key[0]:<15}: {out[key]:<8} (Heun x{steps}: "
              + ", ".join(f"{g} {e:.2e}" for g, e in cand.items()) + ")")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--galaxy", action="store_true", help="also run galaxies-hsc32 (needs dgjax[galaxies])")
    ap.add_argument("--galaxy-only", action="store_true", help="only the galaxies-hsc32 part")
    ap.add_argument("--quick", action="store_true", help="steps 16 64, 4 samples")
    a = ap.parse_args()
    steps_list = [16, 64] if a.quick else a.steps
    n = 4 if a.quick else a.num_samples
    t_all = time.perf_counter()
    rows = [] if a.galaxy_only else oracle_rows(steps_list, n)
    mid = steps_list[len(steps_list) // 2] if 64 not in steps_list else 64
    if a.galaxy or a.galaxy_only:
        grows, ref_mean = galaxy_rows(steps_list, min(n, 4))
        rows += grows
        print(f"galaxies-hsc32 adaptive reference mean log p: {ref_mean:.1f}")
    print_table(rows)
    choose_defaults(rows, mid)
    print(f"total wall {time.perf_counter() - t_all:.0f} s")
