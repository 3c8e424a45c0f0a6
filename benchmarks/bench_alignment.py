"""Cost of score alignment (docs/math.md section 6) relative to a plain PF-ODE solve over the same steps.

On the Gaussian-mixture oracle: for each form, the wall time of one jitted call (best of --repeats,
after a compiling warm-up; best-of because the machine may be shared) and the NFE per sample, each as
a ratio to ``dg.sample`` with the PF-ODE over the same constant Tsit5 steps from t_max to t_end. The score-free rows
also report how well they agree with the score form (Pearson correlation over the batch, fraction of equal signs, and
the median absolute difference over the median |value|, robust to the heavy tails of the Hutchinson noise).

    python benchmarks/bench_alignment.py                       # D = 64, N = 256, 64 steps, t_end = 0.3
    python benchmarks/bench_alignment.py --dim 256 --n 128 --steps 32 --no-exact

NFE convention (dgjax.alignment): a score evaluation 1, a JVP of the score 1, a JVP of a JVP 2.
"""

from __future__ import annotations

import argparse

import diffrax as dfx
import equinox as eqx
import jax
import numpy as np

import dgjax as dg

try:
    from benchmarks._common import save_json, timed
except ImportError:  # run as a script from benchmarks/
    from _common import save_json, timed


def _time(fn, x, repeats):
    out, best = timed(fn, x, repeats=repeats)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--t-end", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-exact", action="store_true", help="skip the score-free form with the exact divergence")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    process = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), args.components, (args.dim,))
    score = gm.score(process)
    x_T = process.prior_sample(jax.random.key(1), (args.n, args.dim))
    key = jax.random.key(2)
    t_end, steps = args.t_end, args.steps

    def alignment(**kw):
        return eqx.filter_jit(lambda x: dg.score_alignment(score, process, x, t_end, steps=steps,
                                                           return_details=True, **kw))

    cases = [
        ("PF-ODE solve (dg.sample)", eqx.filter_jit(lambda x: dg.sample(score, process, x, t_end=t_end, steps=steps))),
        ("score form", alignment()),
        ("score-free, Hutchinson(1), fixed probes (Tsit5 default)", alignment(score_free=True, key=key)),
        ("score-free, Hutchinson(4), fixed probes", alignment(score_free=True, key=key, divergence=dg.Hutchinson(4))),
        ("score-free, Hutchinson(1), redrawn per step", alignment(score_free=True, key=key, redraw_probes=True)),
    ]
    if not args.no_exact:
        cases.append((f"score-free, Exact (D = {args.dim})", alignment(score_free=True, divergence=dg.Exact())))
    # Euler with redrawn probes: positive weights, so the per-evaluation noise averages (see the module)
    euler_steps = 6 * steps  # about the same vector-field evaluations as Tsit5 with `steps`
    cases.append((f"score-free, Hutchinson(1), redrawn, Euler x{euler_steps}",
                  eqx.filter_jit(lambda x: dg.score_alignment(score, process, x, t_end, steps=euler_steps,
                                                              solver=dfx.Euler(), score_free=True, key=key,
                                                              redraw_probes=True, return_details=True))))

    rows, base_t, base_nfe, ref = [], None, None, None
    for name, fn in cases:
        wall, out = _time(fn, x_T, 1 if name.startswith("score-free, Exact") else args.repeats)
        nfe = int(out.nfe)
        if base_t is None:
            base_t, base_nfe = wall, nfe
        row = dict(form=name, wall_ms=1e3 * wall, time_ratio=wall / base_t, nfe=nfe, nfe_ratio=nfe / base_nfe)
        if isinstance(out, dg.Alignment):
            v = np.asarray(out.value)
            if ref is None:
                ref = v
                row["aligned_fraction"] = float(out.aligned_fraction)
            else:
                row["corr_with_score_form"] = float(np.corrcoef(ref, v)[0, 1])
                row["same_sign"] = float(np.mean(np.sign(ref) == np.sign(v)))
                # robust to the heavy tails of the second-order term: median |error| / median |value|
                row["median_rel_err"] = float(np.median(np.abs(v - ref)) / np.median(np.abs(ref)))
        rows.append(row)

    print(f"# score alignment cost: oracle K = {args.components}, D = {args.dim}, N = {args.n}, VP, "
          f"t_max -> t_end = {t_end}, Tsit5 x {steps} constant steps, float32, {jax.devices()[0].platform}, "
          f"best of {args.repeats} (Exact: 1)")
    print("| form | wall ms | time / PF-ODE | NFE per sample | NFE / PF-ODE | corr with score form | same sign "
          "| median rel. err |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        corr = f"{r['corr_with_score_form']:.4f}" if "corr_with_score_form" in r else "-"
        sign = f"{r['same_sign']:.3f}" if "same_sign" in r else "-"
        mre = f"{r['median_rel_err']:.4f}" if "median_rel_err" in r else "-"
        print(f"| {r['form']} | {r['wall_ms']:.1f} | {r['time_ratio']:.2f} | {r['nfe']} | {r['nfe_ratio']:.2f} "
              f"| {corr} | {sign} | {mre} |")
    frac = next(r["aligned_fraction"] for r in rows if "aligned_fraction" in r)
    print(f"\naligned fraction (score form, w_T = s_T): {frac:.3f}")
    save_json(args.json, dict(config=vars(args), rows=rows))


if __name__ == "__main__":
    main()
