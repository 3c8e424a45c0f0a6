"""Detail: -log p of generated samples against their PNG file size.

The papers measure "detail" by lossless compression: a sample with more detail needs more bytes as a PNG,
and its log-density is lower. Here, from N prior latents:
  - PF-ODE samples (the model's own distribution; the headline set);
  - density-guided samples at q in {0.4, 0.6} from the same latents (``dg.DensityGuidance``), which widen
    the range of log p (a pooled set, reported beside the headline). Milder q than elsewhere on purpose: on
    the digits model, DG at q <= 0.3 lowers log p mostly by pushing pixels far outside [-1, 1] (76% of
    them at q = 0.1), which clip to black or white and compress *better*, so PNG size stops measuring
    detail there (the table's ``clip_frac`` column shows it; try ``--guided-q 0.1 0.3``).
log p is re-encoded with ``dg.log_likelihood`` (the PF-ODE's tracked value is kept too). PNG size: the
sample as 8-bit pixels through the data set's transform (digits: 17 grey levels, 8x8; galaxy models: the
asinh stretch of the flux, ``dgjax.models.galaxies.AsinhDisplay``, 256 levels, flux < 0 black), at native
resolution, written by PIL with zlib level 9 (``optimize=True``); the PNG header is a constant offset and
does not change the correlation. ``clip_frac``: the fraction of pixels the rendering saturates.

Headline: Pearson and Spearman correlation of -log p with PNG bytes over the PF-ODE samples (and over the
pooled set). The papers report a strong positive correlation.

    python scripts/detail_png.py [--quick] [--model digits|patches] [--out results/detail_png]
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "detail_png"


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--guided-q", type=float, nargs="*", default=None,
                   help="DG-ODE quantiles added to the pooled set (default 0.4 0.6)")
    args = p.parse_args(argv)
    import dgjax as dg

    model = C.load_model(args.model)
    cfg = C.settings(args, full=dict(num=256, guided_q=[0.4, 0.6]), quick=dict(num=64, guided_q=[0.6]),
                     large=dict(num=128, batch=32), dim=model.dim)
    if args.guided_q is not None:
        cfg["guided_q"] = list(args.guided_q)
    run = C.Run(NAME, args, argv, cfg)
    kw = dict(steps=cfg["steps"], probes=1, batch=cfg["batch"])
    ekw = dict(steps=cfg["encode_steps"], probes=cfg["encode_probes"], batch=cfg["batch"])
    n = cfg["num"]
    x_T = C.latents(model, args.seed, n)

    sets = []  # (label, x, re-encoded log p, tracked log p)
    run.log(f"model {model.name!r} (D={model.dim}); PF-ODE on {n} latents (first call compiles)")
    x, tr = C.pf_ode(args.model, x_T, C.rng_key(args.seed, 1), **kw)
    sets.append(("pfode", x, C.encode(args.model, x, C.rng_key(args.seed, 2), **ekw), tr))
    x_med = C.median_latents(model, x_T)
    for j, q in enumerate(cfg["guided_q"]):
        try:
            with dg.errors.typed_errors():  # the check fires inside a jitted solve
                x, tr = C.guided(args.model, x_med, q, C.rng_key(args.seed, 10 + j, 1), **kw)
        except dg.InfeasibleGuidance:
            run.log(f"DG-ODE q={q:g}: infeasible on this model (dg refused it); left out")
            continue
        sets.append((f"dg_q{q:g}", x, C.encode(args.model, x, C.rng_key(args.seed, 10 + j, 2), **ekw), tr))
        run.log(f"DG-ODE q={q:g} done")

    rows, table = [], []
    for label, x, lp, tr in sets:
        size = C.png_sizes(model, x)
        rows += [dict(set=label, i=i, logp=lp[i], logp_tracked=tr[i], neg_logp=-lp[i], png_bytes=int(size[i]))
                 for i in range(len(lp))]
        table.append(dict(set=label, n=len(lp), mean_logp=lp.mean(), mean_png_bytes=size.mean(),
                          clip_frac=C.clip_fraction(model, x),
                          pearson=C.pearson(-lp, size), spearman=C.spearman(-lp, size)))
    all_lp = np.array([r["logp"] for r in rows])
    all_size = np.array([r["png_bytes"] for r in rows])
    pooled = dict(set="pooled", n=len(rows), mean_logp=all_lp.mean(), mean_png_bytes=all_size.mean(),
                  clip_frac=float(np.mean([t["clip_frac"] for t in table])),
                  pearson=C.pearson(-all_lp, all_size), spearman=C.spearman(-all_lp, all_size))
    table.append(pooled)
    run.csv("samples.csv", rows)
    run.csv("table.csv", table)
    pf = table[0]
    run.headline(f"-log p vs PNG size on {model.name!r}, {pf['n']} PF-ODE samples: Pearson r = {pf['pearson']:+.3f}, "
                 f"Spearman rho = {pf['spearman']:+.3f}; pooled with DG-ODE q in "
                 f"{{{', '.join(lab[4:] for lab, *_ in sets[1:])}}} ({pooled['n']} samples): Pearson r = "
                 f"{pooled['pearson']:+.3f}, Spearman rho = {pooled['spearman']:+.3f}",
                 pfode_pearson=pf["pearson"], pfode_spearman=pf["spearman"], pooled_pearson=pooled["pearson"],
                 pooled_spearman=pooled["spearman"], n_pfode=pf["n"], n_pooled=pooled["n"])

    # grid: PF-ODE samples ordered by log p, highest (top left) to lowest (bottom right)
    _, x_pf, lp_pf, _ = sets[0]
    order = np.argsort(-lp_pf)
    cols = min(16, n)
    rows_n = max(1, min(6, n // cols))
    pick = order[np.linspace(0, n - 1, rows_n * cols).round().astype(int)]
    lp_rows = lp_pf[pick].reshape(rows_n, cols)
    run.grid("grid_by_logp.png", x_pf[pick].reshape((rows_n, cols) + model.shape), model,
             labels=[f"log p {r[0]:.0f}..{r[-1]:.0f}" for r in lp_rows],
             title=f"{model.name}: PF-ODE samples by log p, high to low")

    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, (label, x, lp, _) in enumerate(sets):
        size = C.png_sizes(model, x)
        ax.scatter(-lp, size, s=9, alpha=0.6, color=f"C{k}",
                   label=f"{label} (r = {C.pearson(-lp, size):+.2f})")
    ax.set(xlabel="-log p (nats, re-encoded)", ylabel="PNG size (bytes)",
           title=f"{model.name}: detail vs density (pooled r = {pooled['pearson']:+.2f})")
    ax.legend(fontsize=7)
    run.figure("png_vs_logp.png", fig)
    return run.finish()


if __name__ == "__main__":
    main()
