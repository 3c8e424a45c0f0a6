"""log p vs q: density guidance (DG-ODE) and prior guidance over the same log-density quantiles q.

For each q in {0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95}, from the same N prior latents:
  - DG-ODE: ``dg.DensityGuidance(q)`` (latents rescaled to the median chi radius, as the method starts);
  - prior guidance: the PF-ODE from ``dg.prior_guidance(process, x_T, q)`` (radius chi.ppf(1 - q, D));
  - reference: the plain PF-ODE from the unscaled latents.
log p of every sample is measured independently by re-encoding it with ``dg.log_likelihood``; the DG-ODE's
tracked log p (the value the guidance prescribes, integrated along the path) is reported beside it.

Achieved quantile (the y axis of the plot): for a guided configuration, the mean over its samples of the
empirical CDF of the reference (unguided PF-ODE) re-encoded log p at the sample's re-encoded log p,
    q_achieved = mean_i F_ref(log p_i),   F_ref(v) = (#{ref < v} + 1/2 #{ref = v}) / N_ref,
i.e. the probability that a guided sample has a higher log p than an unguided one. It is 0.5 when guidance
does nothing, and saturates at 0 or 1 once the guided log p leaves the reference range (the DG shift is
1/2 (lambda_max - lambda_min) sqrt(2D) Phi^{-1}(q) nats, many reference standard deviations).

Upward density guidance is bounded (docs/math.md 5, feasibility): the quantile form raises log p by about
113 Phi^{-1}(q) nats on digits (D = 64) against a head-room of about D/2 = 32 nats, so q >= 0.7 is refused
there (dg raises; the table says "infeasible"). The headline Spearman correlations use the feasible q.

Headline: Spearman correlation between q and the mean re-encoded log p (per configuration), and over all
samples (q against each sample's log p), for DG-ODE and prior guidance.

    python scripts/logp_vs_q.py [--quick] [--model digits|patches] [--out results/logp_vs_q]
"""

from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "logp_vs_q"
QS = (0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95)


def achieved_quantile(logp, ref) -> float:
    """mean_i F_ref(logp_i) with mid-rank ties (module docstring)."""
    logp, ref = np.asarray(logp)[:, None], np.asarray(ref)[None, :]
    return float(np.mean(np.mean(ref < logp, axis=1) + 0.5 * np.mean(ref == logp, axis=1)))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--q", type=float, nargs="+", default=list(QS), help="log-density quantiles in (0, 1)")
    p.add_argument("--grid-cols", type=int, default=12, help="samples shown per grid row")
    args = p.parse_args(argv)
    if not all(0 < q < 1 for q in args.q):
        p.error(f"--q: every q must lie in (0, 1) (a log-density quantile); got {args.q}")
    model = C.load_model(args.model)
    cfg = C.settings(args, full=dict(num=64), quick=dict(), large=dict(num=32, batch=32), dim=model.dim)
    cfg["q"] = sorted(args.q)
    run = C.Run(NAME, args, argv, cfg)
    kw = dict(steps=cfg["steps"], probes=1, batch=cfg["batch"])
    ekw = dict(steps=cfg["encode_steps"], probes=cfg["encode_probes"], batch=cfg["batch"])
    n, cols = cfg["num"], min(args.grid_cols, cfg["num"])

    x_T = C.latents(model, args.seed, n)
    run.log(f"model {model.name!r} (D={model.dim}); reference PF-ODE on {n} latents (first call compiles)")
    x_ref, tr_ref = C.pf_ode(args.model, x_T, C.rng_key(args.seed, 1), **kw)
    ref = C.encode(args.model, x_ref, C.rng_key(args.seed, 2), **ekw)
    rows = [dict(method="pfode", q=float("nan"), status="ok", n=n, mean_logp=ref.mean(), std_logp=ref.std(),
                 median_logp=np.median(ref), mean_logp_tracked=tr_ref.mean(), achieved_q=0.5,
                 bits_per_dim=C.bits_per_dim(model, ref).mean(), shift_prescribed=0.0)]
    per_sample = [dict(method="pfode", q="", i=i, logp=ref[i], logp_tracked=tr_ref[i]) for i in range(n)]
    grids = {"dg": [x_ref[:cols]], "pg": [x_ref[:cols]]}
    x_med = C.median_latents(model, x_T)
    import dgjax as dg
    from dgjax.sampling import log_density_shift

    for method in ("dg", "pg"):
        for j, q in enumerate(cfg["q"]):
            stream = (10 if method == "dg" else 20) + j
            if method == "dg":
                lat, q_run = x_med, q
                shift = float(log_density_shift(model.process, q, model.dim))
            else:
                lat, q_run, shift = dg.prior_guidance(model.process, x_T, q), 0.5, float("nan")
            try:
                with dg.errors.typed_errors():  # the check fires inside a jitted solve
                    x, tr = C.guided(args.model, lat, q_run, C.rng_key(args.seed, stream, 1), **kw)
            except dg.InfeasibleGuidance:
                run.log(f"{method} q={q:g}: infeasible (dg refused it: the prescribed rise {shift:+.0f} nats "
                        f"exceeds the head-room, about D/2 = {model.dim / 2:.0f})")
                rows.append(dict(method=method, q=q, status="infeasible", n=0, shift_prescribed=shift))
                grids[method].append(np.zeros_like(x_ref[:cols]))
                continue
            lp = C.encode(args.model, x, C.rng_key(args.seed, stream, 2), **ekw)
            aq = achieved_quantile(lp, ref)
            rows.append(dict(method=method, q=q, status="ok", n=n, mean_logp=lp.mean(), std_logp=lp.std(),
                             median_logp=np.median(lp), mean_logp_tracked=tr.mean(), achieved_q=aq,
                             bits_per_dim=C.bits_per_dim(model, lp).mean(), shift_prescribed=shift))
            per_sample += [dict(method=method, q=q, i=i, logp=lp[i], logp_tracked=tr[i]) for i in range(n)]
            grids[method].append(x[:cols])
            run.log(f"{method} q={q:<5g} mean log p {lp.mean():9.2f} (tracked {tr.mean():9.2f})  achieved q {aq:.3f}")

    run.csv("table.csv", rows)
    run.csv("samples.csv", per_sample)
    for method, label in (("dg", "density guidance (DG-ODE)"), ("pg", "prior guidance")):
        status = {r["q"]: r["status"] for r in rows if r["method"] == method}
        labels = ["PF-ODE"] + [f"q={q:g}" + (" (infeasible)" if status[q] != "ok" else "") for q in cfg["q"]]
        run.grid(f"grid_{method}.png", np.stack(grids[method]), model, labels=labels,
                 title=f"{model.name}: {label}; one latent per column")

    # headline: Spearman of q against log p, over configurations (means) and over all samples
    head, text = {}, []
    for method, label in (("dg", "DG-ODE"), ("pg", "prior guidance")):
        ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        qs = [r["q"] for r in ok]
        rho_means = C.spearman(qs, [r["mean_logp"] for r in ok])
        smp = [r for r in per_sample if r["method"] == method]
        rho_samples = C.spearman([r["q"] for r in smp], [r["logp"] for r in smp])
        bad = [r["q"] for r in rows if r["method"] == method and r["status"] != "ok"]
        head[f"{method}_spearman_means"] = rho_means
        head[f"{method}_spearman_samples"] = rho_samples
        head[f"{method}_feasible_q"] = qs
        head[f"{method}_mean_logp"] = [r["mean_logp"] for r in ok]
        rng = f"{min(r['mean_logp'] for r in ok):.1f} .. {max(r['mean_logp'] for r in ok):.1f}" if ok else "-"
        text.append(f"{label}: Spearman(q, mean log p) = {rho_means:+.3f}, per sample {rho_samples:+.3f}, "
                    f"mean log p {rng} nats over q in {{{', '.join(f'{q:g}' for q in qs)}}}"
                    + (f" (infeasible: {', '.join(f'{q:g}' for q in bad)})" if bad else ""))
    head["pfode_mean_logp"] = float(ref.mean())
    run.headline(f"log p increases with q on {model.name!r} -- " + "; ".join(text)
                 + f"; unguided PF-ODE mean log p {ref.mean():.1f}", **head)

    plt = C.pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for method, label, mk in (("dg", "density guidance (DG-ODE)", "o-"), ("pg", "prior guidance", "s-")):
        ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        if not ok:
            continue
        q = np.array([r["q"] for r in ok])
        ax[0].errorbar(q, [r["mean_logp"] for r in ok], yerr=[r["std_logp"] for r in ok], fmt=mk, capsize=3,
                       label=f"{label}, re-encoded")
        if method == "dg":
            ax[0].plot(q, [r["mean_logp_tracked"] for r in ok], "o:", color="C0", alpha=0.6, label="DG-ODE, tracked")
        ax[1].plot(q, [r["achieved_q"] for r in ok], mk, label=label)
    for r in rows:
        if r["status"] == "infeasible":
            ax[1].axvline(r["q"], color="C0", ls=":", alpha=0.3)
    ax[0].axhline(ref.mean(), color="k", lw=1, ls="--", label="PF-ODE (unguided)")
    ax[0].set(xlabel="requested quantile q", ylabel="log p (nats)", title=f"{model.name}: log p vs q (mean +- std)")
    ax[0].legend(fontsize=7)
    ax[1].plot([0, 1], [0, 1], "k--", lw=1, label="achieved = requested")
    ax[1].set(xlabel="requested quantile q", ylabel="achieved quantile  P(log p > unguided log p)",
              title="achieved vs requested quantile", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax[1].legend(fontsize=7, title="dotted: DG infeasible", title_fontsize=7)
    run.figure("logp_vs_q.png", fig)
    return run.finish()


if __name__ == "__main__":
    main()
