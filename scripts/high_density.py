"""High density: the high-density sampler (``dg.HighDensity(t_switch)``: PF-ODE from t_max down to t_switch,
then the HD-ODE dx/dt = f x - g^2 s, the reverse SDE's drift without noise) against the PF-ODE, for several
switch times, all from the same N prior latents.

For each configuration: mean log p re-encoded with ``dg.log_likelihood`` (the independent measure), the
log p tracked while sampling (docs/math.md 4(b); it uses the learned score in place of grad log p_t, so it can
drift from the re-encoded value), bits/dim and the mean PNG size of the samples (the papers find the
high-density samples smooth and cartoon-like: less detail, fewer bytes). Image grids: one row per
configuration, the same latents in every column. A larger t_switch switches earlier along sampling
(for the VP process, lambda_t = 10 - 20 t: t_switch = 0.9 is almost the whole path on the HD-ODE). The default
switch times sit at the same fractions of each process's log-SNR range (``default_switch_times``), so
processes on other time ranges (the galaxy models: t in [1e-3, 10]) get comparable settings.

Headline: mean log p of each HD configuration minus the PF-ODE's (re-encoded). The papers report much
higher log p than PF-ODE samples, with smooth, cartoon-like images.

    python scripts/high_density.py [--quick] [--model digits|patches] [--out results/high_density]
"""

from __future__ import annotations

import os
import sys
from functools import cache

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "high_density"


@cache
def _hd_program(model_name: str, t_switch: float, steps: int):
    import jax

    import dgjax as dg

    model = C.load_model(model_name)

    @jax.jit
    def run(x_T, key):
        out = dg.sample(model.score, model.process, x_T, sampler=dg.HighDensity(t_switch), key=key,
                        track_logp=True, **C.fixed(steps))
        return out.x, out.logp

    return run


def default_switch_times(process, fractions=(0.1, 0.3, 0.5, 0.7, 0.9)) -> list[float]:
    """Switch times at fixed fractions of the process's log-SNR range (``_common.log_snr_times``): t = 0.1 ...
    0.9 on VP (the script's historical defaults), 0.00541 ... 8.31 on the galaxy models' VPSDE(1, 1, 10)."""
    return C.log_snr_times(process, fractions)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--t-switch", type=float, nargs="+", default=None,
                   help="switch times in the process's (t_min, t_max] (default: where lambda_t has crossed 0.1, 0.3, "
                        "0.5, 0.7, 0.9 of its range, 3 significant digits: t = 0.1 ... 0.9 for VP, 0.00541 0.148 "
                        "1.74 4.94 8.31 for the galaxy models' VPSDE(1, 1, 10); the middle one with --quick)")
    p.add_argument("--grid-cols", type=int, default=12, help="samples shown per grid row")
    args = p.parse_args(argv)
    model = C.load_model(args.model)
    t_lo, t_hi = model.process.t_min, model.process.t_max
    if args.t_switch and not all(t_lo < t <= t_hi for t in args.t_switch):
        p.error(f"--t-switch: switch times must lie in ({t_lo}, {t_hi}]; got {args.t_switch}")
    fracs = default_switch_times(model.process)
    cfg = C.settings(args, full=dict(t_switch=fracs), quick=dict(t_switch=[fracs[2]], steps=16),
                     large=dict(num=32, batch=32), dim=model.dim)
    if args.t_switch:
        cfg["t_switch"] = sorted(args.t_switch)
    run = C.Run(NAME, args, argv, cfg)
    n, b, cols = cfg["num"], cfg["batch"], min(args.grid_cols, cfg["num"])
    ekw = dict(steps=cfg["encode_steps"], probes=cfg["encode_probes"], batch=b)
    x_T = C.latents(model, args.seed, n)
    lam = model.process.log_snr

    run.log(f"model {model.name!r} (D={model.dim}); PF-ODE on {n} latents (first call compiles)")
    configs = [("pfode", None)] + [(f"hd_t{ts:g}", ts) for ts in cfg["t_switch"]]
    rows, per_sample, grid = [], [], []
    ref = None
    for k, (label, ts) in enumerate(configs):
        key = C.rng_key(args.seed, k, 1)
        if ts is None:
            x, tr = C.pf_ode(args.model, x_T, key, steps=cfg["steps"], probes=1, batch=b)
        else:
            x, tr = C.batched(_hd_program(args.model, float(ts), cfg["steps"]), x_T, key, b)
        lp = C.encode(args.model, x, C.rng_key(args.seed, k, 2), **ekw)
        ref = lp if ref is None else ref
        size = C.png_sizes(model, x)
        rows.append(dict(sampler=label, t_switch=ts if ts is not None else float("nan"),
                         lambda_switch=float(lam(ts)) if ts is not None else float("nan"), n=n,
                         mean_logp=lp.mean(), std_logp=lp.std(), mean_logp_tracked=tr.mean(),
                         gain_vs_pfode=lp.mean() - ref.mean(), frac_above_pfode_same_latent=np.mean(lp > ref),
                         bits_per_dim=C.bits_per_dim(model, lp).mean(), mean_png_bytes=size.mean()))
        per_sample += [dict(sampler=label, i=i, logp=lp[i], logp_tracked=tr[i], png_bytes=int(size[i]))
                       for i in range(n)]
        grid.append(x[:cols])
        r = rows[-1]
        run.log(f"{label:>10}: mean log p {r['mean_logp']:9.2f} (tracked {r['mean_logp_tracked']:9.2f}), "
                f"gain {r['gain_vs_pfode']:+8.2f}, PNG {r['mean_png_bytes']:.1f} B")
    run.csv("table.csv", rows)
    run.csv("samples.csv", per_sample)
    run.grid("grid.png", np.stack(grid), model, labels=["PF-ODE"] + [f"HD, t_switch={t:g}" for t in cfg["t_switch"]],
             title=f"{model.name}: high-density sampler; one latent per column")

    hd = rows[1:]
    best = max(hd, key=lambda r: r["gain_vs_pfode"])
    gains = ", ".join(f"t_switch={r['t_switch']:g}: {r['gain_vs_pfode']:+.1f}" for r in hd)
    run.headline(f"high-density sampler on {model.name!r}: mean log p minus PF-ODE's ({rows[0]['mean_logp']:.1f} nats, "
                 f"re-encoded) -- {gains} nats; PNG {rows[0]['mean_png_bytes']:.1f} B (PF-ODE) vs "
                 f"{best['mean_png_bytes']:.1f} B (t_switch={best['t_switch']:g})",
                 pfode_mean_logp=rows[0]["mean_logp"], t_switch=[r["t_switch"] for r in hd],
                 hd_mean_logp=[r["mean_logp"] for r in hd], hd_gain=[r["gain_vs_pfode"] for r in hd],
                 min_gain=min(r["gain_vs_pfode"] for r in hd), max_gain=best["gain_vs_pfode"],
                 pfode_png_bytes=rows[0]["mean_png_bytes"], hd_png_bytes=[r["mean_png_bytes"] for r in hd])

    plt = C.pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ts = [r["t_switch"] for r in hd]
    ax[0].errorbar(ts, [r["mean_logp"] for r in hd], yerr=[r["std_logp"] for r in hd], fmt="o-", capsize=3,
                   label="HD sampler, re-encoded")
    ax[0].plot(ts, [r["mean_logp_tracked"] for r in hd], "o:", alpha=0.6, label="HD sampler, tracked")
    ax[0].axhline(rows[0]["mean_logp"], color="k", ls="--", lw=1, label="PF-ODE")
    ax[0].set(xlabel="t_switch (PF-ODE above, HD-ODE below)", ylabel="log p (nats)", title=f"{model.name}: mean log p")
    ax[0].legend(fontsize=7)
    ax[1].plot(ts, [r["mean_png_bytes"] for r in hd], "s-", color="C2", label="HD sampler")
    ax[1].axhline(rows[0]["mean_png_bytes"], color="k", ls="--", lw=1, label="PF-ODE")
    ax[1].set(xlabel="t_switch", ylabel="mean PNG size (bytes)", title="detail (PNG bytes)")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    run.figure("high_density.png", fig)
    return run.finish()


if __name__ == "__main__":
    main()
