"""One command, one table: dgjax's costs and accuracies as ratios taken side by side in one run.

    python benchmarks/run_all.py            # about 10-11 minutes on a quiet 2-core CPU (590-650 s measured)
    python benchmarks/run_all.py --quick    # a smoke run (seconds)

Rows (B / A: the second configuration over the first; wall times are best-of interleaved rounds after a
compiling run; NFE counts score evaluations per sample, a JVP counting as one more):

- published baseline vs dgjax at equal accuracy: the published research code's setup -- fixed-step Euler,
  1024 steps, in a ``lax.scan`` over a per-sample function, ``vmap``-ed over the batch, one Rademacher
  probe -- against dgjax's adaptive Tsit5 (one probe) at the cheapest tolerance that is at least as accurate.
  Both get the same latents and the same probes. Error: mean |tracked log p - reference| / D; the reference
  is the exact log p at the sample (oracle: discretisation error plus probe noise) or, for the trained
  model, the same one-probe estimator solved to rtol = 1e-6 from the same latent (discretisation error
  alone).
- DG-ODE / PF-ODE, tracked / untracked (PF-ODE and reverse SDE), DG-SDE / DG-ODE per step, the cost of one
  more Hutchinson probe, and the two score-alignment forms against a plain PF-ODE solve.
- Probe variance (bench_probe_variance.py, issue 25): the standard deviation of PF-ODE log p across 16 probe
  keys for 4 fixed samples, at equal NFE (constant Tsit5 steps), for the default estimator (StepwiseHutchinson),
  one draw a step and three probes at half the steps, as a ratio to one fixed Rademacher probe (bootstrap
  standard error, per-sample ratios, the solver's own error); oracle D = 3072, the digits UNet and
  galaxies-hsc32.
- Score-free alignment with its defaults (1000 constant Tsit5 steps: probes redrawn per step, Hadamard
  cycle) against the score form, oracle D = 64: wall, NFE and the correlation of the two values over the
  batch (issue 14: >= 0.999).
- Issue 14 (bench_tracking_cost.py): N = 64, 64 constant steps on the oracle and the digits UNet: tracked /
  untracked reverse SDE, DG-ODE / PF-ODE, a published-style tracked reverse SDE (lax.scan, vmapped) against
  dg.ReverseSDE(), the published-style loop's own untracked -> tracked and untracked -> dgjax, diffrax's
  UnsafeBrownianPath against dgjax's default path; and the reverse-SDE tracking schemes (Euler-Maruyama,
  Stratonovich Heun, Milstein) at about 1000 NFE. These rows also give the median of the wall ratios taken
  within each round ("median B/A") and XLA's bytes accessed per loop iteration ("bytes B/A", deterministic).

Models: the Gaussian-mixture oracle in D = 3072 (5 components: every row), the shipped ``digits`` UNet
(D = 64: the baseline comparison), and a small Flax MLP (D = 3072: guidance and tracking costs).
- Issue 25 (bench_grad_memory.py): XLA's temp bytes of ``jax.grad`` of the mean log-likelihood (oracle) at 8, 32
  and 128 constant Tsit5 steps under RecursiveCheckpointAdjoint and BacksolveAdjoint (compiled, not run).
Per-sampler tables with more settings: bench_guidance.py, bench_sde.py, bench_alignment.py,
bench_pfode_accuracy.py.
"""

from __future__ import annotations

import argparse
import time

import diffrax as dfx
import jax
import jax.numpy as jnp

import dgjax as dg

try:
    from benchmarks._common import interleaved_best, save_json, small_flax_score
    from benchmarks.bench_grad_memory import grad_memory_rows, print_rows as print_grad_memory
    from benchmarks.bench_probe_variance import probe_variance_rows
    from benchmarks.bench_tracking_cost import accuracy_rows, cost_rows
except ImportError:  # run as a script from benchmarks/
    from _common import interleaved_best, save_json, small_flax_score
    from bench_grad_memory import grad_memory_rows, print_rows as print_grad_memory
    from bench_probe_variance import probe_variance_rows
    from bench_tracking_cost import accuracy_rows, cost_rows

P = dg.VP()
# dgjax configurations offered against the baseline: adaptive Tsit5, and fixed-step Heun (on the trained
# UNet, whose vector field is rough at low noise, second order beats Tsit5's fifth: 1.9e-4 per dim at 1024 NFE
# against Tsit5 rtol 1e-5's 1.1e-3 at 2390 NFE)
# (issue 14, item 6: looser tolerances are offered too; the cheapest one at least as accurate as the baseline wins)
# and constant Tsit5 steps (issue 14, item 6: on the oracle Tsit5 x 8, 98 NFE, is 17x more accurate than the
# baseline's 2048; x 6, 74 NFE, just as accurate)
TSIT5 = {**{f"Tsit5 rtol {r:g}": dict(rtol=r, atol=r) for r in (5e-3, 3e-3, 2e-3, 1e-3, 1e-4)},
         **{f"Tsit5 x{n}": dict(steps=n) for n in (6, 8, 12)}}
HEUN = {f"Heun x{n}": dict(solver=dfx.Heun(), steps=n) for n in (64, 96, 128, 192, 256)}
BENCH_KEY = jax.random.key(7)  # probes of the baseline comparison: dgjax and the baseline draw the same ones


def published_baseline(score, process, x_T, key, steps: int = 1024, logp_T=None):
    """The published code's approach: per-sample Euler in lax.scan with one fixed Rademacher probe, vmapped.
    Returns (x (N, *shape), tracked log p (N,))."""
    ts = jnp.linspace(process.t_max, process.t_min, steps + 1).astype(x_T.dtype)

    def one(x, k):
        eps = jax.random.rademacher(k, x.shape, x.dtype)

        def drift(z, t):
            _, _, f, g2 = process.coefficients(t)
            return f * z - 0.5 * g2 * score(z[None], t)[0]

        def step(carry, tt):
            z, lp = carry
            t0, t1 = tt
            u, ju = jax.jvp(lambda w: drift(w, t0), (z,), (eps,))
            return (z + (t1 - t0) * u, lp - (t1 - t0) * jnp.sum(eps * ju)), None

        (z1, dlp), _ = jax.lax.scan(step, (x, jnp.zeros((), x.dtype)), (ts[:-1], ts[1:]))
        return z1, dlp

    x1, dlp = jax.vmap(one)(x_T, jax.random.split(key, x_T.shape[0]))
    start = process.prior_log_prob(x_T) if logp_T is None else logp_T
    return x1, start + dlp


def _row(name, setting, nfe_a, nfe_b, t_a, t_b, err_a=None, err_b=None):
    return dict(comparison=name, setting=setting, nfe_a=int(nfe_a), nfe_b=int(nfe_b), nfe_ratio=nfe_b / nfe_a,
                wall_a=t_a, wall_b=t_b, wall_ratio=t_b / t_a, err_a=err_a, err_b=err_b)


def baseline_vs_dgjax(score, x_T, label, reference, euler_steps, candidates, repeats, logp_T=None):
    """Baseline (A) vs the cheapest dgjax configuration (B) that is at least as accurate, picked from
    ``candidates`` (name -> dg.sample keyword arguments); also dgjax's own fixed Euler at the baseline's steps
    (adaptive or higher-order vs fixed Euler at equal accuracy). If no candidate reaches the baseline's
    accuracy, the most accurate one is reported and the row says so (``equal_accuracy`` False)."""
    key = BENCH_KEY
    fns = {"baseline": (jax.jit(lambda x, k: published_baseline(score, P, x, k, euler_steps, logp_T)), (x_T, key)),
           "dg_euler": (jax.jit(lambda x, k: dg.sample(score, P, x, key=k, track_logp=True, solver=dfx.Euler(),
                                                       steps=euler_steps, logp_T=logp_T)), (x_T, key))}
    for name, kw in candidates.items():
        fns[name] = (jax.jit(lambda x, k, kw=kw: dg.sample(score, P, x, key=k, track_logp=True, logp_T=logp_T, **kw)),
                     (x_T, key))
    outs, best = interleaved_best(fns, repeats)
    d = x_T[0].size
    err = {k: float(jnp.mean(jnp.abs(o[1] - reference(o[0])) if k == "baseline"
                             else jnp.abs(o.logp - reference(o.x)))) / d for k, o in outs.items()}
    nfe = {k: (2 * euler_steps if k == "baseline" else int(o.nfe)) for k, o in outs.items()}
    ok = [k for k in candidates if err[k] <= err["baseline"]]
    pick = min(ok, key=lambda k: nfe[k]) if ok else min(candidates, key=lambda k: err[k])
    rows = [_row("published baseline -> dgjax " + pick, label, nfe["baseline"], nfe[pick],
                 best["baseline"], best[pick], err["baseline"], err[pick]),
            _row("dgjax Euler (fixed) -> dgjax " + pick, label, nfe["dg_euler"], nfe[pick],
                 best["dg_euler"], best[pick], err["dg_euler"], err[pick])]
    for r in rows:
        r["equal_accuracy"] = bool(ok)
    return rows, {k: (nfe[k], best[k], err[k]) for k in fns}


def sampler_ratios(score, x_T, label, steps, repeats, include_sde=True, include_alignment=False):
    key = jax.random.key(3)
    noise = dg.noise_window_log_snr(P, 0.3, -3.0, 9.0)

    def run(sampler=None, track=False, **kw):
        return jax.jit(lambda x, k: dg.sample(score, P, x, sampler=sampler, key=k, track_logp=track, **kw)), (x_T, key)

    fns = {
        "pf": run(solver=dfx.Tsit5(), steps=steps),
        "dg": run(dg.DensityGuidance(0.6), solver=dfx.Tsit5(), steps=steps),
        "pf_track": run(track=True, solver=dfx.Tsit5(), steps=steps),
        "pf_track4": run(track=True, solver=dfx.Tsit5(), steps=steps, divergence=dg.Hutchinson(4)),
    }
    if include_sde:
        fns.update({
            "rsde": run(dg.ReverseSDE(), steps=4 * steps),
            "rsde_track": run(dg.ReverseSDE(), track=True, steps=4 * steps),
            "dg_euler": run(dg.DensityGuidance(0.6), solver=dfx.Euler(), steps=4 * steps),
            "dgsde": run(dg.StochasticDensityGuidance(0.6, noise), steps=4 * steps),
        })
    if include_alignment:
        t_end = 0.3
        fns["pf_align_span"] = (jax.jit(lambda x, k: dg.sample(score, P, x, steps=steps, t_end=t_end).x), (x_T, key))
        fns["align"] = (jax.jit(lambda x, k: dg.score_alignment(score, P, x, t_end, steps=steps)), (x_T, key))
        fns["align_free"] = (jax.jit(lambda x, k: dg.score_alignment(score, P, x, t_end, key=k, steps=steps,
                                                                     score_free=True)), (x_T, key))
    outs, best = interleaved_best(fns, repeats)
    nfe = {k: int(o.nfe) for k, o in outs.items() if hasattr(o, "nfe")}
    rows = [_row("PF-ODE -> DG-ODE (q=0.6)", label, nfe["pf"], nfe["dg"], best["pf"], best["dg"]),
            _row("PF-ODE untracked -> tracked", label, nfe["pf"], nfe["pf_track"], best["pf"], best["pf_track"]),
            _row("tracked, 1 -> 4 Hutchinson probes", label, nfe["pf_track"], nfe["pf_track4"], best["pf_track"],
                 best["pf_track4"])]
    rows[-1]["per_probe_wall_vs_untracked"] = (best["pf_track4"] - best["pf_track"]) / 3 / best["pf"]
    if include_sde:
        rows += [_row("reverse SDE untracked -> tracked", label, nfe["rsde"], nfe["rsde_track"], best["rsde"],
                      best["rsde_track"]),
                 _row("DG-ODE (Euler) -> DG-SDE", label, nfe["dg_euler"], nfe["dgsde"], best["dg_euler"],
                      best["dgsde"])]
    if include_alignment:
        n_pf = int(dg.sample(score, P, x_T, steps=steps, t_end=0.3).nfe)
        n_al = int(dg.score_alignment(score, P, x_T, 0.3, steps=steps, return_details=True).nfe)
        n_fr = int(dg.score_alignment(score, P, x_T, 0.3, key=key, steps=steps, score_free=True,
                                      return_details=True).nfe)
        rows += [_row("PF-ODE solve -> score alignment", label, n_pf, n_al, best["pf_align_span"], best["align"]),
                 _row("PF-ODE solve -> score-free alignment", label, n_pf, n_fr, best["pf_align_span"],
                      best["align_free"])]
    return rows


def alignment_corr(repeats, dim=64, n=256, steps=1000, t_end=0.3):
    """Score-free alignment with its defaults at constant Tsit5 steps (probes redrawn per step, in a Hadamard cycle)
    against the score form (bench_alignment.py's setting: oracle K = 8, D = 64): wall, NFE and the correlation over the
    batch."""
    gm = dg.random_mixture(jax.random.key(0), 8, (dim,))
    score = gm.score(P)
    x_T = P.prior_sample(jax.random.key(1), (n, dim))
    key = jax.random.key(2)
    fns = {"score": (jax.jit(lambda x, k: dg.score_alignment(score, P, x, t_end, steps=steps, return_details=True)),
                     (x_T, key)),
           "free": (jax.jit(lambda x, k: dg.score_alignment(score, P, x, t_end, key=k, steps=steps, score_free=True,
                                                            return_details=True)), (x_T, key))}
    outs, best = interleaved_best(fns, repeats)
    corr = float(jnp.corrcoef(outs["score"].value, outs["free"].value)[0, 1])
    row = _row("score alignment -> score-free (defaults)", f"oracle D={dim}", int(outs["score"].nfe),
               int(outs["free"].nfe), best["score"], best["free"])
    row["corr_with_score_form"] = corr
    return [row]


def print_table(rows):
    print(f"\n{'comparison (A -> B)':<44} {'setting':<22} {'NFE A':>6} {'NFE B':>6} {'NFE B/A':>8} "
          f"{'wall A s':>9} {'wall B s':>9} {'wall B/A':>9} {'median B/A':>10} {'bytes B/A':>9} {'err/dim A':>10} "
          f"{'err/dim B':>10}")
    for r in rows:
        ea = "" if r["err_a"] is None else f"{r['err_a']:.2e}"
        eb = "" if r["err_b"] is None else f"{r['err_b']:.2e}"
        med = f"{r['wall_ratio_median']:.3f}" if "wall_ratio_median" in r else ""
        byt = f"{r['bytes_ratio']:.3f}" if "bytes_ratio" in r else ""
        print(f"{r['comparison']:<44} {r['setting']:<22} {r['nfe_a']:>6d} {r['nfe_b']:>6d} {r['nfe_ratio']:>8.3f} "
              f"{r['wall_a']:>9.3f} {r['wall_b']:>9.3f} {r['wall_ratio']:>9.3f} {med:>10} {byt:>9} {ea:>10} {eb:>10}")
    for r in rows:
        if "per_probe_wall_vs_untracked" in r:
            print(f"one more Hutchinson probe ({r['setting']}): +{r['per_probe_wall_vs_untracked']:.3f} of an "
                  f"untracked PF-ODE solve")
    for r in rows:
        if "corr_with_score_form" in r:
            print(f"score-free alignment with its defaults ({r['setting']}, constant Tsit5 steps: probes redrawn "
                  f"per step in a Hadamard cycle): "
                  f"corr {r['corr_with_score_form']:.4f} with the score form")
    for r in rows:
        if r["comparison"].startswith("published baseline"):
            if r["equal_accuracy"]:
                print(f"speed-up over the published approach at equal or better accuracy ({r['setting']}): "
                      f"{1 / r['wall_ratio']:.1f}x wall, {1 / r['nfe_ratio']:.1f}x fewer NFE")
            else:
                print(f"no dgjax configuration offered reached the published approach's accuracy ({r['setting']}); "
                      f"the most accurate is shown")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    quick = args.quick
    repeats = 1 if quick else args.repeats
    n = 4 if quick else 16
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}", flush=True)
    rows, details = [], {}
    t0 = time.perf_counter()

    def done(section):
        print(f"[{time.perf_counter() - t0:6.1f}s] {section} done", flush=True)

    # oracle, D = 3072
    shape = (3, 8, 8) if quick else (3, 32, 32)
    gm = dg.random_mixture(jax.random.key(0), 5, shape, mean_scale=0.5, var_range=(1e-3, 0.1))
    o_score, o_lp = gm.score(P), gm.log_prob(P)
    x_T = P.prior_sample(jax.random.key(1), (n,) + shape)
    r, details["oracle"] = baseline_vs_dgjax(o_score, x_T, f"oracle D={gm.dim}", lambda x: o_lp(x, P.t_min),
                                             128 if quick else 1024,
                                             {"Tsit5 rtol 1e-2": dict(rtol=1e-2, atol=1e-2)} if quick else TSIT5,
                                             repeats, logp_T=o_lp(x_T, P.t_max))
    rows += r
    done("oracle: baseline vs dgjax")
    rows += sampler_ratios(o_score, x_T, f"oracle D={gm.dim}", 8 if quick else 32, repeats,
                           include_alignment=True)
    done("oracle: sampler ratios")
    # issue 14: N = 64, 64 constant steps: tracking / guidance overhead, published-style tracked reverse SDE
    # the oracle's rows take 0.1-0.5 s a call and move by +-10% between rounds: more rounds for their minimum
    rows += cost_rows(o_score, P.prior_sample(jax.random.key(5), (8 if quick else 64,) + shape),
                      f"oracle D={gm.dim} N=64", 8 if quick else 64, repeats if quick else max(repeats, 10))
    rsde_accuracy = accuracy_rows(dim=32, n=16, nfe=120) if quick else accuracy_rows()
    rows += alignment_corr(repeats, dim=16, n=32, steps=8) if quick else alignment_corr(repeats)
    done("oracle: tracking cost (N = 64) and reverse-SDE schemes at 1000 NFE")
    # issue 25: peak (XLA temp) memory of a gradient through log p against the steps, both adjoints (compiled only)
    grad_memory = (grad_memory_rows((8, 32), dim=192, n=4, digits=False) if quick
                   else grad_memory_rows((8, 32, 128), dim=gm.dim, n=8, digits=False))
    done("gradient memory against steps (both adjoints)")

    # issue 25, item 2: the spread of log p across probe keys at equal NFE, per divergence estimator
    probe_rows = probe_variance_rows(["oracle"] if quick else ["oracle", "digits", "galaxies-hsc32"],
                                     n=2 if quick else 4, keys=4 if quick else 16, steps=4 if quick else 32,
                                     dim=192 if quick else 3072, which="core")
    done("probe variance")
    if quick:  # the trained model's rows need its compile time: full runs only
        print_table(rows)
        print_grad_memory(grad_memory)
        return rows

    # the shipped digits model, D = 64
    model = dg.load_model("digits")
    m_score = model.score
    # Reference: the same one-probe estimator (same latent, same Rademacher probe as both compared methods)
    # solved to rtol = atol = 1e-6, so the error is the discretisation error alone; the probe noise, common to
    # every method, cancels (an exact-divergence reference costs D = 64 UNet JVPs per stage, about 30000 NFE
    # per sample, and its error would be dominated by that shared noise, about 1e-2 per dim).
    xm = model.prior_sample(jax.random.key(2), 8)
    ref = jax.jit(lambda x, k: dg.sample(m_score, P, x, key=k, track_logp=True, rtol=1e-6, atol=1e-6))(xm, BENCH_KEY)
    done(f"digits: same-probe reference ({int(ref.nfe)} NFE)")
    r, details["digits"] = baseline_vs_dgjax(m_score, xm, f"digits UNet D={model.dim}", lambda x: ref.logp,
                                             1024, {**TSIT5, **HEUN}, min(repeats, 2))
    rows += r
    done("digits: baseline vs dgjax")
    rows += cost_rows(m_score, model.prior_sample(jax.random.key(6), 64), f"digits UNet D={model.dim} N=64", 64,
                      max(repeats, 4))  # 2.5 s a call: 4 rounds, since 2 left its ratios +-15% apart between runs
    done("digits: tracking cost (N = 64)")

    # a small Flax MLP, D = 3072 (network-like cost of the score)
    d = 192 if quick else 3072
    rows += sampler_ratios(small_flax_score(P, d), P.prior_sample(jax.random.key(4), (n, d)), f"Flax MLP D={d}",
                           8 if quick else 32, repeats, include_sde=False)
    done("Flax MLP: sampler ratios")

    print_table(rows)
    print_grad_memory(grad_memory)
    for label, det in details.items():
        print(f"\n[{label}] every configuration: NFE, wall s, mean |err|/dim")
        for k, (nf, t, e) in det.items():
            print(f"  {k:<14} {nf:>6d} {t:>8.3f} {e:>10.2e}")
    save_json(args.json, dict(rows=rows, details=details, rsde_accuracy=rsde_accuracy, grad_memory=grad_memory,
                              probe_variance=probe_rows))
    return rows


if __name__ == "__main__":
    main()
