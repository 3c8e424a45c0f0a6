"""Cost of density guidance (issue 3): DG-ODE vs PF-ODE at the same solver and steps, and the cost of
tracking the log-density along the guided path.

Two score functions, each in D = 3072 (a 32x32x3 image's dimension):
  * oracle: the Gaussian-mixture oracle (dg.random_mixture, 4 components);
  * flax:   a small Flax (linen) MLP eps-predictor with random weights on top of a Gaussian baseline,
            eps_hat = sigma_t x + 0.1 MLP(x, lambda_t): the baseline keeps the score sane (that of unit
            Gaussian data), so guidance is feasible, while the MLP carries the cost of a network.

For each (score, solver) the columns are: wall time of one jitted call of dg.sample (best of --repeats
after a compiling warm-up; best-of because the machine may be shared), NFE per sample (score
evaluations; a JVP counts as one more), and the ratios
  DG/PF       DG-ODE (quantile q) vs PF-ODE, neither tracked: goal NFE ratio 1.00, time ratio <= 1.05;
  DG-chk/PF   the same with the feasibility check off (feasibility_tol=0), to show what the check costs;
  track/DG    DG-ODE with track_logp=True (Hutchinson, 1 probe) vs without.

    python benchmarks/bench_guidance.py                      # N = 64, Tsit5 x 32 steps and Euler x 128
    python benchmarks/bench_guidance.py --n 16 --repeats 3   # quicker
"""

from __future__ import annotations

import argparse
import time

import diffrax as dfx
import jax

import dgjax as dg

try:
    from benchmarks._common import save_json, small_flax_score
except ImportError:  # run as a script from benchmarks/
    from _common import save_json, small_flax_score



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="batch size")
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--q", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)

    process = dg.VP()
    d, n = args.dim, args.n
    mixture = dg.random_mixture(jax.random.key(0), 4, (d,))
    scores = {"oracle": mixture.score(process), "flax": small_flax_score(process, d)}
    solvers = {"Tsit5 x 32": (dfx.Tsit5(), 32), "Euler x 128": (dfx.Euler(), 128)}
    x_T = process.prior_sample(jax.random.key(1), (n, d))
    key = jax.random.key(2)
    dg_sampler = dg.DensityGuidance(args.q)
    dg_nocheck = dg.DensityGuidance(args.q, feasibility_tol=0.0)
    # PF-ODE from the same (median-rescaled) latents, so both solve the same kind of problem
    x_med = dg_sampler.prepare(process, x_T)

    rows = []
    print(f"device: {jax.devices()[0].device_kind}, D = {d}, N = {n}, q = {args.q}, best of {args.repeats}")
    header = (f"{'score':7s} {'solver':12s} | {'PF s':>7s} {'DG s':>7s} {'DG-chk s':>8s} {'DG+trk s':>8s} | "
              f"{'NFE PF':>6s} {'NFE DG':>6s} {'NFE trk':>7s} | {'DG/PF t':>7s} {'DG/PF nfe':>9s} "
              f"{'DG-chk/PF t':>11s} {'trk/DG t':>8s} {'trk/DG nfe':>10s}")
    print(header)
    print("-" * len(header))
    def make_run(score, solver, steps):
        def run(sampler, track):
            @jax.jit
            def f(x):
                out = dg.sample(score, process, x, sampler=sampler, solver=solver, steps=steps,
                                track_logp=track, key=key if track else None)
                return out.x, out.nfe, out.logp if track else out.x[:, 0]
            return f
        return run

    for sname, score in scores.items():
        for vname, (solver, steps) in solvers.items():
            run = make_run(score, solver, steps)

            # interleave the runs (PF, DG, PF, DG, ...) by taking best-of over rounds, so that load
            # changes on a shared machine affect both alike
            fns = {"pf": (run(dg.PFODE(), False), x_med), "dg": (run(dg_sampler, False), x_T),
                   "dg_nochk": (run(dg_nocheck, False), x_T), "dg_track": (run(dg_sampler, True), x_T)}
            best = {k: float("inf") for k in fns}
            nfe = {}
            for k, (f, x) in fns.items():
                out = jax.block_until_ready(f(x))  # compile
                nfe[k] = int(out[1])
            for _ in range(args.repeats):
                for k, (f, x) in fns.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(x))
                    best[k] = min(best[k], time.perf_counter() - t0)
            row = dict(score=sname, solver=vname, n=n, dim=d, q=args.q,
                       time_pf=best["pf"], time_dg=best["dg"], time_dg_nocheck=best["dg_nochk"],
                       time_dg_track=best["dg_track"], nfe_pf=nfe["pf"], nfe_dg=nfe["dg"],
                       nfe_dg_track=nfe["dg_track"])
            row["time_ratio_dg_pf"] = row["time_dg"] / row["time_pf"]
            row["nfe_ratio_dg_pf"] = row["nfe_dg"] / row["nfe_pf"]
            row["time_ratio_nocheck_pf"] = row["time_dg_nocheck"] / row["time_pf"]
            row["time_ratio_track_dg"] = row["time_dg_track"] / row["time_dg"]
            row["nfe_ratio_track_dg"] = row["nfe_dg_track"] / row["nfe_dg"]
            rows.append(row)
            print(f"{sname:7s} {vname:12s} | {row['time_pf']:7.3f} {row['time_dg']:7.3f} "
                  f"{row['time_dg_nocheck']:8.3f} {row['time_dg_track']:8.3f} | {row['nfe_pf']:6d} "
                  f"{row['nfe_dg']:6d} {row['nfe_dg_track']:7d} | {row['time_ratio_dg_pf']:7.3f} "
                  f"{row['nfe_ratio_dg_pf']:9.2f} {row['time_ratio_nocheck_pf']:11.3f} "
                  f"{row['time_ratio_track_dg']:8.2f} {row['nfe_ratio_track_dg']:10.2f}", flush=True)
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
