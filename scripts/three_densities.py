"""Three log-densities of one sample (the Cartoonists paper's Figure 4): samples x_0 are drawn with the
reverse SDE (Euler-Maruyama) from prior latents, and for each:

  r_0       the log-density tracked along that SDE path (docs/math.md 4(c): free; biased upward by the score error),
  log p^ODE the PF-ODE encoding ``dg.log_likelihood`` (exact for the model's ODE density, up to the solver
            and the Hutchinson probes),
  ELBO      ``dg.elbo`` (docs/math.md 10: stratified log-SNR draws, antithetic Stein estimate; a lower bound of the
            reverse-SDE model's log-density).

All in bits/dim (the data set's dequantisation offset). Reported, not asserted: means, how often each
ordering holds per sample, Pearson correlations, a scatter plot. The paper reports r_0 > log p^ODE > ELBO on
average (bits/dim: r_0 lowest), all three strongly correlated.

    python scripts/three_densities.py [--quick] [--model digits|patches] [--out results/three_densities]
"""

from __future__ import annotations

import os
import sys
from functools import cache

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "three_densities"


@cache
def _sde_program(model_name: str, steps: int):
    import jax

    import dgjax as dg

    model = C.load_model(model_name)

    @jax.jit
    def run(x_T, key):
        out = dg.sample(model.score, model.process, x_T, sampler=dg.ReverseSDE(), key=key, track_logp=True,
                        steps=steps)
        return out.x, out.logp

    return run


@cache
def _elbo_program(model_name: str, num_samples: int):
    import jax

    import dgjax as dg

    model = C.load_model(model_name)

    @jax.jit
    def run(x, key):
        r = dg.elbo(model.score, model.process, x, key=key, num_samples=num_samples)
        return r.elbo, r.stderr

    return run


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--sde-steps", type=int, default=None, help="Euler-Maruyama steps of the reverse SDE")
    p.add_argument("--elbo-samples", type=int, default=None, help="log-SNR draws per sample of the ELBO")
    args = p.parse_args(argv)
    model = C.load_model(args.model)
    cfg = C.settings(args, full=dict(num=64, sde_steps=500, elbo_samples=256, encode_steps=16, encode_probes=4),
                     quick=dict(num=8, sde_steps=10, elbo_samples=4), dim=model.dim)
    cfg["sde_steps"] = args.sde_steps or cfg["sde_steps"]
    cfg["elbo_samples"] = args.elbo_samples or cfg["elbo_samples"]
    run = C.Run(NAME, args, argv, cfg)
    n, b = cfg["num"], cfg["batch"]
    x_T = C.latents(model, args.seed, n)
    run.log(f"model {model.name!r} (D={model.dim}); reverse SDE x {cfg['sde_steps']} steps on {n} latents")
    x, r0 = C.batched(_sde_program(args.model, cfg["sde_steps"]), x_T, C.rng_key(args.seed, 1), b)
    ode = C.encode(args.model, x, C.rng_key(args.seed, 2), steps=cfg["encode_steps"], probes=cfg["encode_probes"],
                   batch=b)
    elbo, elbo_se = C.batched(_elbo_program(args.model, cfg["elbo_samples"]), x, C.rng_key(args.seed, 3), b)
    bpd = {k: C.bits_per_dim(model, v) for k, v in (("r0", r0), ("ode", ode), ("elbo", elbo))}
    rows = [dict(i=i, r0_nats=r0[i], ode_nats=ode[i], elbo_nats=elbo[i], elbo_se_nats=elbo_se[i],
                 r0_bpd=bpd["r0"][i], ode_bpd=bpd["ode"][i], elbo_bpd=bpd["elbo"][i]) for i in range(n)]
    run.csv("samples.csv", rows)
    summ = dict(mean_bpd={k: float(v.mean()) for k, v in bpd.items()},
                se_bpd={k: float(v.std(ddof=1) / np.sqrt(n)) for k, v in bpd.items()},
                frac_r0_above_ode=float(np.mean(r0 > ode)), frac_ode_above_elbo=float(np.mean(ode > elbo)),
                frac_paper_order=float(np.mean((r0 > ode) & (ode > elbo))),
                pearson={"r0_ode": C.pearson(r0, ode), "ode_elbo": C.pearson(ode, elbo),
                         "r0_elbo": C.pearson(r0, elbo)},
                mean_elbo_se_nats=float(elbo_se.mean()))
    run.json("stats.json", summ)
    mb, pc = summ["mean_bpd"], summ["pearson"]
    order = " > ".join(k for k, _ in sorted(((k, -v) for k, v in mb.items()), key=lambda kv: -kv[1]))
    run.headline(f"three densities on {model.name!r} ({n} reverse-SDE samples), bits/dim: r_0 {mb['r0']:.3f}, "
                 f"PF-ODE {mb['ode']:.3f}, ELBO {mb['elbo']:.3f} (log p order: {order}; paper: r0 > ode > elbo); "
                 f"per sample r0>ode {summ['frac_r0_above_ode']:.2f}, ode>elbo {summ['frac_ode_above_elbo']:.2f}; "
                 f"Pearson r0-ode {pc['r0_ode']:.2f}, ode-elbo {pc['ode_elbo']:.2f}, r0-elbo {pc['r0_elbo']:.2f}",
                 r0_bpd=mb["r0"], ode_bpd=mb["ode"], elbo_bpd=mb["elbo"], frac_paper_order=summ["frac_paper_order"],
                 pearson_r0_ode=pc["r0_ode"], pearson_ode_elbo=pc["ode_elbo"], pearson_r0_elbo=pc["r0_elbo"])
    plt = C.pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(8.5, 3.6))
    ax[0].scatter(bpd["ode"], bpd["r0"], s=10, label="r_0 (SDE-tracked)")
    ax[0].scatter(bpd["ode"], bpd["elbo"], s=10, label="ELBO")
    lim = [min(min(v.min() for v in bpd.values()), 0), max(v.max() for v in bpd.values())]
    ax[0].plot(lim, lim, "k--", lw=1)
    ax[0].set(xlabel="PF-ODE bits/dim", ylabel="bits/dim", title=f"{model.name}: three densities")
    ax[0].legend(fontsize=7)
    ax[1].bar(list(mb), list(mb.values()), yerr=list(summ["se_bpd"].values()), capsize=3)
    ax[1].set(ylabel="mean bits/dim", title="means (lower = higher log p)")
    fig.tight_layout()
    run.figure("three_densities.png", fig)
    run.grid("samples.png", np.asarray(x)[None, :min(n, 12)], model)
    return run.finish()


if __name__ == "__main__":
    main()
