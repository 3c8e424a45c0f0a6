"""Cost of the mode-tracking ODE (docs/math.md 9, ``dg.ModeTracking``) against the HD-ODE it refines (docs/math.md 5),
per step, at the same solver and steps, from x_t at t = 0.5 down to t_end = 0.3 (the random-weight network's Jacobian is
far from symmetric at lower noise, where I - cH becomes indefinite and mode tracking rightly stops: a random network is
not the gradient of a density).

Score: the Gaussian-mixture oracle (dg.random_mixture, 4 components; its HVPs are exact, so CG converges
as it would on a smooth network) and a small Flax MLP eps-predictor with random weights (the cost of a
network). Mode tracking per vector-field evaluation: 1 score + 2 (Laplacian by one Hutchinson probe and
its gradient) + cg_steps + 1 (CG HVPs and the residual check) [+ D for the dense negative-definiteness
check, used by default for D <= 64]; the HD-ODE: 1. Columns: NFE per sample (dg's count), wall per
call (best of --repeats after a compiling run, interleaved), and the ratios mode/HD.

    python benchmarks/bench_mode.py                  # D = 64 and 1024, N = 8, Tsit5 x 16 steps
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import dgjax as dg

try:
    from benchmarks._common import interleaved_best, save_json, small_flax_score
except ImportError:  # run as a script from benchmarks/
    from _common import interleaved_best, save_json, small_flax_score


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--cg-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    proc = dg.VP()
    t, t_end = 0.5, 0.3
    rows = []
    print(f"N = {args.n}, Tsit5 x {args.steps} constant steps from t = {t} to {t_end}, cg_steps = {args.cg_steps}, "
          f"Hutchinson (1 probe) for grad Lap")
    print(f"{'score':>7} {'D':>5} {'check':>10} | {'NFE HD':>7} {'NFE mode':>9} {'ratio':>6} | "
          f"{'wall HD':>8} {'wall mode':>9} {'ratio':>6}")
    for d in args.dims:
        mix = dg.random_mixture(jax.random.key(1), 4, (d,))
        scores = {"oracle": mix.score(proc), "flax": small_flax_score(proc, d)}
        x_t = dg.add_noise(proc, mix.sample(jax.random.key(2), args.n), t, jax.random.key(3))
        for name, score in scores.items():
            for check in (["dense", "curvature"] if d <= 64 else ["curvature"]):
                sampler = dg.ModeTracking(cg_steps=min(args.cg_steps, d), check=check, cg_tol=1e-2)

                def run_mode(x, key, sampler=sampler, score=score):
                    return dg.sample(score, proc, x, sampler=sampler, key=key, t_start=t, t_end=t_end, steps=args.steps)

                def run_hd(x, key, score=score):
                    return dg.sample(score, proc, x, sampler=dg.HighDensity(t), key=key, t_start=t, t_end=t_end,
                                     steps=args.steps)

                key = jax.random.key(4)
                try:
                    with dg.errors.typed_errors():
                        outs, best = interleaved_best({"hd": (jax.jit(run_hd), (x_t, key)),
                                                       "mode": (jax.jit(run_mode), (x_t, key))}, repeats=args.repeats)
                except (dg.LinearSolveFailed, dg.ModeBifurcation) as e:  # mode tracking refuses: report it
                    msg = "CG did not converge" if isinstance(e, dg.LinearSolveFailed) else "H_q not negative definite"
                    print(f"{name:>7} {d:>5} {check:>10} | mode tracking stopped: {msg} (a random network's "
                          f"Jacobian is not symmetric)", flush=True)
                    rows.append(dict(score=name, dim=d, check=check, failed=msg))
                    continue
                nh, nm = int(outs["hd"].nfe), int(outs["mode"].nfe)
                row = dict(score=name, dim=d, check=check, nfe_hd=nh, nfe_mode=nm, wall_hd=best["hd"],
                           wall_mode=best["mode"], nfe_ratio=nm / nh, wall_ratio=best["mode"] / best["hd"],
                           dist=float(jnp.sqrt(jnp.mean(jnp.sum((outs["mode"].x - outs["hd"].x) ** 2, -1)))))
                rows.append(row)
                print(f"{name:>7} {d:>5} {check:>10} | {nh:>7} {nm:>9} {nm / nh:>6.1f} | {best['hd']:>8.4f} "
                      f"{best['mode']:>9.4f} {row['wall_ratio']:>6.1f}", flush=True)
    print("NFE counts a JVP or VJP of the score as one evaluation, with CG at its bound cg_steps (it stops "
          "earlier once 10x below cg_tol = 1e-2); mode tracking wall includes that early stop")
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
