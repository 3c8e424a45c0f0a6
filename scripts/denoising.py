"""Denoising (the Cartoonists paper's Figure 1): held-out images are noised to x_t at a few times t, then
denoised four ways with ``dg.denoise``: the posterior mean (Tweedie), a posterior sample (the reverse SDE
from x_t), the high-density approximation (the HD-ODE from t) and the exact posterior mode (the
mode-tracking ODE, docs/math.md 9). Each result's log p is re-encoded with ``dg.log_likelihood`` (PF-ODE; the
independent measure). Also reported: the HD-ODE's distance from the mode (the approximation's error).

Where the mode bifurcates or vanishes along the path (``dg.ModeTracking`` stops with an error instead of
stepping through it), each sample is re-run alone and those that stop again are reported as vanished (NaN).

The clean images x_0 are held-out test images where the model has a dataset (digits, patches); the galaxy
models ship none, so there x_0 are the model's own PF-ODE samples (Tsit5 on the process's default grid).
The default noise times sit at 0.3, 0.5, 0.7 of the process's log-SNR range (t = 0.3, 0.5, 0.7 on VP;
0.148, 1.74, 4.94 on the galaxy models' VPSDE(1, 1, 10)).

Headline: mean log p per method and t, and mean |HD - mode| / |mode|. The paper: the mode and its HD
approximation are smooth, cartoon-like and of much higher density than the mean's or a sample's.

    python scripts/denoising.py [--quick] [--model digits] [--t 0.3 0.5 0.7] [--out results/denoising]
    python scripts/denoising.py --model galaxies-ztf32 --num 4   # galaxy model (dgjax[galaxies])
"""

from __future__ import annotations

import os
import sys
from functools import cache

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "denoising"
METHODS = ("mean", "sample", "hd", "mode")


@cache
def _program(model_name: str, method: str, t: float, steps: int, sde_steps: int, mode_solver: str = "gmres"):
    import jax

    import dgjax as dg

    model = C.load_model(model_name)

    @jax.jit
    def run(x_t, key):
        kw = dict(key=key)
        if method == "sample":
            kw.update(steps=sde_steps)
        elif method in ("hd", "mode"):
            kw.update(steps=steps)  # one phase from t: no phase-split sliver (see C.fixed)
        if method == "mode":
            # Hutchinson grad Lap (1 probe) and the cheap curvature check (one probe HVP): the dense check's D
            # extra HVPs per evaluation would dominate the cost on a network (the Lanczos check's 10 less so).
            # The UNet's Jacobian J is not symmetric: GMRES solves with J itself (the mode equation's own
            # linearisation), "cg-sym" with (J + J^T)/2 by CG
            solve = (dict(linear_solver="gmres") if mode_solver == "gmres"
                     else dict(linear_solver="cg", symmetrize=True))
            kw.update(sampler_kwargs=dict(cg_tol=1e-3, check="curvature", **solve))
        return dg.denoise(model.score, model.process, x_t, t, method=method, **kw).x

    return run


def _denoise(model_name, method, t, x_t, key, steps, sde_steps, mode_solver="gmres"):
    """Run one method on the batch. Mode tracking stops the whole batch where one sample's mode bifurcates
    or vanishes (or the solve fails): then each sample is re-run alone and those that stop again are NaN."""
    import jax
    import jax.numpy as jnp

    import dgjax as dg

    run = _program(model_name, method, t, steps, sde_steps, mode_solver)
    # mode tracking stops at a bifurcation, or where its linear solve fails (typed run-time checks)
    stopped = (dg.ModeBifurcation, dg.LinearSolveFailed) if method == "mode" else ()
    try:
        with dg.errors.typed_errors():
            return np.asarray(run(jnp.asarray(x_t), key)), 0
    except stopped:
        pass
    out = np.full(x_t.shape, np.nan, np.float32)
    for i, k in enumerate(jax.random.split(key, x_t.shape[0])):
        try:
            with dg.errors.typed_errors():
                out[i] = np.asarray(run(jnp.asarray(x_t[i:i + 1]), k))[0]
        except stopped:
            pass
    return out, int(np.isnan(out).reshape(len(out), -1).any(1).sum())



def clean_images(model_name, model, n: int, seed: int, cfg) -> np.ndarray:
    """x_0: n held-out test images, or (models without a dataset: the galaxy models) n of the model's own
    PF-ODE samples from latents of ``seed``."""
    if hasattr(model.dataset, "split"):
        return np.asarray(model.dataset.split("test", n, seed=seed))
    x, _ = C.pf_ode(model_name, C.latents(model, seed, n), C.rng_key(seed, 8), steps=cfg["steps"], probes=1, batch=n)
    return np.asarray(x)


def main(argv=None) -> dict:

    import dgjax as dg

    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--t", type=float, nargs="+", default=None,
                   help="noise times (default: 0.3, 0.5, 0.7 of the log-SNR range, t = 0.3 0.5 0.7 on VP; the "
                        "middle one with --quick)")
    p.add_argument("--sde-steps", type=int, default=None, help="Euler-Maruyama steps of the posterior sample")
    p.add_argument("--mode-solver", choices=("gmres", "cg-sym"), default="gmres",
                   help="mode tracking's linear solve: GMRES with the score's Jacobian J (default) or CG with "
                        "its symmetric part (J + J^T)/2")
    args = p.parse_args(argv)
    model = C.load_model(args.model)
    lo, hi = model.process.t_min, model.process.t_max
    if args.t and not all(lo < t <= hi for t in args.t):
        p.error(f"--t: noise times must lie in ({lo}, {hi}]; got {args.t}")
    ts = C.log_snr_times(model.process, (0.3, 0.5, 0.7))
    cfg = C.settings(args, full=dict(t=ts, num=16, steps=16, sde_steps=200),
                     quick=dict(t=[ts[1]], num=4, steps=6, sde_steps=20), dim=model.dim)
    cfg["t"] = sorted(args.t) if args.t else cfg["t"]
    cfg["sde_steps"] = args.sde_steps or cfg["sde_steps"]
    cfg["mode_solver"] = args.mode_solver
    run = C.Run(NAME, args, argv, cfg)
    n = cfg["num"]
    ekw = dict(steps=cfg["encode_steps"], probes=cfg["encode_probes"], batch=n)
    x0 = clean_images(args.model, model, n, args.seed, cfg)
    lp0 = C.encode(args.model, x0, C.rng_key(args.seed, 9), **ekw)
    rows, per_sample, grid, labels = [], [], [], []
    for k, t in enumerate(cfg["t"]):
        x_t = np.asarray(dg.add_noise(model.process, x0, t, C.rng_key(args.seed, k, 0)))
        res = {}
        for j, m in enumerate(METHODS):
            res[m], lost = _denoise(args.model, m, float(t), x_t, C.rng_key(args.seed, k, 1 + j), cfg["steps"],
                                    cfg["sde_steps"], args.mode_solver)
            ok = ~np.isnan(res[m]).reshape(n, -1).any(1)
            lp = np.full(n, np.nan)
            if ok.any():
                lp[ok] = C.encode(args.model, res[m][ok], C.rng_key(args.seed, k, 10 + j),
                                  **dict(ekw, batch=int(ok.sum())))
            row = dict(t=t, method=m, n=n, vanished=lost, mean_logp=np.nanmean(lp), std_logp=np.nanstd(lp),
                       bits_per_dim=np.nanmean(C.bits_per_dim(model, lp)), mean_png_bytes=C.png_sizes(
                           model, res[m][ok]).mean() if ok.any() else float("nan"))
            rows.append(row)
            per_sample += [dict(t=t, method=m, i=i, logp=lp[i]) for i in range(n)]
            run.log(f"t={t:g} {m:>6}: mean log p {row['mean_logp']:9.2f} (vanished {lost}/{n})")
        diff = np.linalg.norm((res["hd"] - res["mode"]).reshape(n, -1), axis=1)
        rel = diff / np.linalg.norm(res["mode"].reshape(n, -1), axis=1)
        rows.append(dict(t=t, method="hd_vs_mode", n=n, mean_dist=np.nanmean(diff), mean_rel_dist=np.nanmean(rel)))
        grid += [x0, x_t] + [np.nan_to_num(res[m]) for m in METHODS]
        labels += ["x_0", f"x_t (t={t:g})"] + [f"{m}" for m in METHODS]
    run.csv("table.csv", rows)
    run.csv("samples.csv", per_sample)
    cols = min(n, 12)
    run.grid("grid.png", np.stack([g[:cols] for g in grid]), model, labels=labels,
             title=f"{model.name}: denoising x_t (Cartoonists Fig. 1)")
    by = {(r["t"], r["method"]): r for r in rows}
    text = "; ".join(f"t={t:g}: " + ", ".join(f"{m} {by[(t, m)]['mean_logp']:.1f}" for m in METHODS)
                     + f", |HD-mode|/|mode| {by[(t, 'hd_vs_mode')]['mean_rel_dist']:.3f}" for t in cfg["t"])
    run.headline(f"denoising on {model.name!r}, mean re-encoded log p (nats; data {lp0.mean():.1f}) -- {text}",
                 t=cfg["t"], data_logp=float(lp0.mean()),
                 **{f"{m}_logp": [by[(t, m)]["mean_logp"] for t in cfg["t"]] for m in METHODS},
                 hd_mode_rel_dist=[by[(t, "hd_vs_mode")]["mean_rel_dist"] for t in cfg["t"]],
                 vanished=sum(by[(t, "mode")]["vanished"] for t in cfg["t"]))
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in METHODS:
        ax.plot(cfg["t"], [by[(t, m)]["mean_logp"] for t in cfg["t"]], "o-", label=m)
    ax.axhline(lp0.mean(), color="k", ls="--", lw=1, label="data x_0")
    ax.set(xlabel="noise time t of x_t", ylabel="mean log p (nats, re-encoded)", title=f"{model.name}: denoisings")
    ax.legend(fontsize=7)
    run.figure("denoising.png", fig)
    return run.finish()


if __name__ == "__main__":
    main()
