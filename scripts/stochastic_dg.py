"""Stochastic density guidance (DG-SDE): noise orthogonal to the score, early or late in sampling, at three q.

``dg.StochasticDensityGuidance(q, noise)`` adds ``phi P dW`` (P projects out the score direction) and
compensates the drift so that the log-density keeps following the DG schedule b^q (docs/math.md 5). The noise
windows are those of the published experiments, in log-SNR lambda (VP: lambda in [-10, 10]):
early phi_tilde = 0.2 on lambda in (-10, -4) (varies structure), late phi_tilde = 0.3 on (-3, 9) (varies
texture). Both forms of the drift correction are run: the published one (tr(PHP) ~ Lap) and the exact
one (tr(PHP) = Lap - s^T H s / |s|^2, one JVP more per step).

From L latents (rescaled to the median radius, as DG starts), each SDE configuration draws R noise paths
per latent. The DG-ODE reference is the same Euler solve with phi = 0 (identical drift, no noise), from the
same latents, so a difference is the noise's alone. For every sample: log p tracked along the path
(docs/math.md 4(d); it includes the published form's deviation from the schedule) and re-encoded with
``dg.log_likelihood`` (independent). "Stray" = SDE sample's log p minus the DG-ODE's from the same latent.

Grids (one per window and form): one row per q; columns grouped per latent: [DG-ODE, draw 1, .., draw R].

Headline: mean and RMS stray (re-encoded) per window and form, against the gap between neighbouring q
levels (how far apart the schedule puts them); and whether the SDE samples' log p still increases with q.
The paper reports that DG-SDE keeps log p on schedule while adding variation.
Default q: 0.1, 0.3, 0.5 (upward q >= 0.7 is infeasible on the digits model, see logp_vs_q.py).

    python scripts/stochastic_dg.py [--quick] [--model digits|patches] [--out results/stochastic_dg]
"""

from __future__ import annotations

import itertools
import os
import sys
from functools import cache

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "stochastic_dg"
WINDOWS = {"early": (0.2, -10.0, -4.0), "late": (0.3, -3.0, 9.0)}  # phi_tilde level, lambda_from, lambda_to


@cache
def _dgsde_program(model_name: str, steps: int, exact: bool, probes: int):
    """One program for every window and q: the window (level, lambda range) and q are traced arguments
    (``dg.noise_window_log_snr`` accepts traced values)."""
    import jax

    import dgjax as dg

    model = C.load_model(model_name)
    process = model.process

    @jax.jit
    def run(x_T, q, level, lam_lo, lam_hi, key):
        noise = dg.noise_window_log_snr(process, level, lam_lo, lam_hi)
        sampler = dg.StochasticDensityGuidance(q, noise, exact=exact, start_at_median=False)
        out = dg.sample(model.score, process, x_T, sampler=sampler, key=key, track_logp=True,
                        divergence=dg.Hutchinson(probes), **C.fixed(steps))
        return out.x, out.logp

    return run


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--q", type=float, nargs="+", default=[0.1, 0.3, 0.5], help="log-density quantiles")
    p.add_argument("--draws", type=int, default=None, help="noise paths per latent (R)")
    p.add_argument("--sde-steps", type=int, default=None, help="Euler-Maruyama steps")
    p.add_argument("--probes", type=int, default=None, help="Hutchinson probes of the Laplacian")
    p.add_argument("--grid-latents", type=int, default=4, help="latents shown per grid row")
    args = p.parse_args(argv)
    if not all(0 < q < 1 for q in args.q):
        p.error(f"--q: every q must lie in (0, 1) (a log-density quantile); got {args.q}")
    model = C.load_model(args.model)
    cfg = C.settings(args, full=dict(num=16, draws=2, sde_steps=200, probes=1, batch=32),
                     quick=dict(num=4, draws=2, sde_steps=40, probes=1, batch=8),
                     large=dict(num=8, draws=2, batch=16), dim=model.dim)
    cfg["q"] = sorted(args.q)
    cfg["windows"] = WINDOWS
    run = C.Run(NAME, args, argv, cfg)
    import jax.numpy as jnp

    from dgjax.sampling import log_density_shift

    L, R, b = cfg["num"], cfg["draws"], cfg["batch"]
    ekw = dict(steps=cfg["encode_steps"], probes=cfg["encode_probes"], batch=b)
    x_med = C.median_latents(model, C.latents(model, args.seed, L))
    x_rep = jnp.repeat(x_med, R, axis=0)  # latent i -> rows i*R .. i*R + R-1
    gl = min(args.grid_latents, L)
    f32 = jnp.float32

    rows, per_sample, ode, sde = [], [], {}, {}
    run.log(f"model {model.name!r} (D={model.dim}); {L} latents x {R} draws, {cfg['sde_steps']} Euler-Maruyama steps")
    # DG-ODE reference: the published program with phi = 0 (level 0; bounds irrelevant)
    for j, q in enumerate(cfg["q"]):
        prog = _dgsde_program(args.model, cfg["sde_steps"], False, cfg["probes"])
        x, tr = C.batched(prog, x_med, C.rng_key(args.seed, j, 1), b, f32(q), f32(0.0), f32(-1.0), f32(1.0))
        enc = C.encode(args.model, x, C.rng_key(args.seed, j, 2), **ekw)
        ode[q] = (x, tr, enc)
        rows.append(dict(config="dg_ode", window="none", form="", q=q, n=L, mean_logp_tracked=tr.mean(),
                         mean_logp=enc.mean(), std_logp=enc.std(),
                         shift_prescribed=float(log_density_shift(model.process, q, model.dim))))
        per_sample += [dict(config="dg_ode", window="none", form="", q=q, latent=i, draw=0, logp_tracked=tr[i],
                            logp=enc[i]) for i in range(L)]
        run.log(f"DG-ODE q={q:g}: mean log p {enc.mean():9.2f} (tracked {tr.mean():9.2f})")

    for w, (level, lo, hi) in WINDOWS.items():
        for form in ("published", "exact"):
            prog = _dgsde_program(args.model, cfg["sde_steps"], form == "exact", cfg["probes"])
            for j, q in enumerate(cfg["q"]):
                key = C.rng_key(args.seed, 100 + j, 1 + (w == "late"))  # the same noise for both forms
                x, tr = C.batched(prog, x_rep, key, b, f32(q), f32(level), f32(lo), f32(hi))
                enc = C.encode(args.model, x, C.rng_key(args.seed, 100 + j, 3 + (w == "late"), 1 + (form == "exact")),
                               **ekw)
                _, tr0, enc0 = ode[q]
                d_enc = enc - np.repeat(enc0, R)
                d_tr = tr - np.repeat(tr0, R)
                sde[(w, form, q)] = (x, tr, enc)
                rows.append(dict(config="dg_sde", window=w, form=form, q=q, n=L * R, mean_logp_tracked=tr.mean(),
                                 mean_logp=enc.mean(), std_logp=enc.std(), stray_mean=d_enc.mean(),
                                 stray_rms=np.sqrt(np.mean(d_enc**2)), stray_tracked_mean=d_tr.mean(),
                                 stray_tracked_rms=np.sqrt(np.mean(d_tr**2)),
                                 tracked_minus_reencoded=(tr - enc).mean(),
                                 pixel_rms_vs_ode=float(np.sqrt(np.mean((x - np.repeat(ode[q][0], R, axis=0))**2)))))
                per_sample += [dict(config="dg_sde", window=w, form=form, q=q, latent=i // R, draw=1 + i % R,
                                    logp_tracked=tr[i], logp=enc[i]) for i in range(L * R)]
                r = rows[-1]
                run.log(f"DG-SDE {w:>5} {form:>9} q={q:g}: log p {r['mean_logp']:9.2f} "
                        f"(tracked {r['mean_logp_tracked']:9.2f}), stray {r['stray_mean']:+7.2f} "
                        f"(rms {r['stray_rms']:6.2f}), pixel rms vs ODE {r['pixel_rms_vs_ode']:.3f}")
            grid = []
            for q in cfg["q"]:
                xo, xs = ode[q][0], sde[(w, form, q)][0]
                grid.append(np.concatenate([np.concatenate([xo[i:i + 1], xs[i * R:(i + 1) * R]]) for i in range(gl)]))
            run.grid(f"grid_{w}_{form}.png", np.stack(grid), model, labels=[f"q={q:g}" for q in cfg["q"]],
                     title=f"{model.name}: {w} noise, {form} form; per latent: DG-ODE, then {R} DG-SDE draws")
    run.csv("table.csv", rows)
    run.csv("samples.csv", per_sample)

    # headline
    qs = cfg["q"]
    gaps = [abs(ode[b_][2].mean() - ode[a_][2].mean()) for a_, b_ in itertools.pairwise(qs)]
    min_gap = min(gaps) if gaps else float("nan")
    head, parts = {"ode_mean_logp": [ode[q][2].mean() for q in qs], "min_q_gap": min_gap}, []
    for w in WINDOWS:
        for form in ("published", "exact"):
            rs = [r for r in rows if r["config"] == "dg_sde" and r["window"] == w and r["form"] == form]
            mean_abs = float(np.mean([abs(r["stray_mean"]) for r in rs]))
            rms = float(np.sqrt(np.mean([r["stray_rms"] ** 2 for r in rs])))
            these = [x for x in per_sample if x["config"] == "dg_sde" and x["window"] == w and x["form"] == form]
            rho = C.spearman([x["q"] for x in these], [x["logp"] for x in these])
            head[f"{w}_{form}_mean_abs_stray"] = mean_abs
            head[f"{w}_{form}_rms_stray"] = rms
            head[f"{w}_{form}_mean_logp"] = [r["mean_logp"] for r in rs]
            head[f"{w}_{form}_spearman_q"] = rho
            parts.append(f"{w}/{form}: |mean stray| {mean_abs:.1f}, rms {rms:.1f}, Spearman(q, log p) {rho:+.2f}")
    run.headline(f"DG-SDE on {model.name!r}, log p (re-encoded) of SDE samples minus DG-ODE's from the same latent, "
                 f"over q in {{{', '.join(f'{q:g}' for q in qs)}}} (nats; nearest q levels are {min_gap:.1f} apart): "
                 + "; ".join(parts), **head)

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.18
    for k, (w, form) in enumerate([(w, f) for w in WINDOWS for f in ("published", "exact")]):
        rs = [r for r in rows if r["config"] == "dg_sde" and r["window"] == w and r["form"] == form]
        xs = np.arange(len(qs)) + (k - 1.5) * width
        axes[0].bar(xs, [r["stray_mean"] for r in rs], width, yerr=[r["stray_rms"] for r in rs], capsize=2,
                    label=f"{w} noise, {form}")
    axes[0].set_xticks(np.arange(len(qs)), [f"q={q:g}" for q in qs])
    axes[0].axhline(0, color="k", lw=1)
    axes[0].set(ylabel="log p(SDE) - log p(ODE), nats", title=f"{model.name}: stray from the DG-ODE (mean, bar = rms)")
    axes[0].legend(fontsize=7)
    for k, q in enumerate(qs):
        a = np.repeat(ode[q][2], R)
        for m, (w, form) in enumerate([(w, "published") for w in WINDOWS]):
            axes[1].scatter(a, sde[(w, form, q)][2], s=10, alpha=0.6, marker="os"[m], color=f"C{k}",
                            label=f"q={q:g}, {w}")
    lo = min(float(np.min(ode[q][2])) for q in qs)
    hi = max(float(np.max(ode[q][2])) for q in qs)
    axes[1].plot([lo, hi], [lo, hi], "k--", lw=1)
    axes[1].set(xlabel="DG-ODE log p (re-encoded)", ylabel="DG-SDE log p (re-encoded)",
                title="per sample (published form)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    run.figure("stochastic_dg.png", fig)
    return run.finish()


if __name__ == "__main__":
    main()
