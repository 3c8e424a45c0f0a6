"""Consistency of the estimators: the same quantity computed two independent ways, per sample.

1. PF-ODE log p tracked while sampling (docs/math.md 4(a), Hutchinson probes) vs re-encoding the samples with
   ``dg.log_likelihood`` (other probes). Both estimate the same number, the model's PF-ODE density, so
   they differ only by Hutchinson noise and discretisation. The correlation between two re-encodings
   with different probes is reported as the noise ceiling.
2. Reverse SDE (``dg.ReverseSDE``): the log p tracked for free along the noisy path (docs/math.md 4(c), Ito,
   Euler-Maruyama; with the full settings also the Stratonovich scheme, which pays for the Laplacian)
   vs the PF-ODE re-encoding of the SDE's samples. The SDE's tracked value uses the learned score in
   place of grad log p_t, so it is biased by the score error (docs/math.md 4(c)); the mean bias is reported.
3. Score alignment (``dg.score_alignment``, docs/math.md 6): the score form <s_{t_end}(x_{t_end}), w_{t_end}> vs
   the score-free form (omega tracked along the path, Hutchinson), from the same latents; and how often
   they agree on the sign (whether alignment holds).

Headline: the Pearson correlation of each pair (and the bias / sign agreement).

    python scripts/consistency.py [--quick] [--model digits|patches] [--out results/consistency]
"""

from __future__ import annotations

import os
import sys
from functools import cache

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "consistency"


@cache
def _sde_program(model_name: str, steps: int, scheme: str, probes: int):
    import jax

    import dgjax as dg

    model = C.load_model(model_name)

    @jax.jit
    def run(x_T, key):
        out = dg.sample(model.score, model.process, x_T, sampler=dg.ReverseSDE(scheme=scheme), key=key,
                        track_logp=True, divergence=dg.Hutchinson(probes), **C.fixed(steps))
        return out.x, out.logp

    return run


@cache
def _align_program(model_name: str, t_end: float, steps: int, score_free: bool, probes: int):
    import jax

    import dgjax as dg

    model = C.load_model(model_name)

    @jax.jit
    def run(x_T, key):
        return dg.score_alignment(model.score, model.process, x_T, t_end, key=key, score_free=score_free,
                                  divergence=dg.Hutchinson(probes), **C.fixed(steps))

    return run


def _pair(a, b) -> dict:
    d = np.asarray(a) - np.asarray(b)
    return dict(pearson=C.pearson(a, b), spearman=C.spearman(a, b), mean_a=np.mean(a), mean_b=np.mean(b),
                mean_diff=d.mean(), rms_diff=np.sqrt(np.mean(d**2)), n=len(d))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--track-probes", type=int, default=None, help="Hutchinson probes of the PF-ODE tracking")
    p.add_argument("--sde-steps", type=int, default=None, help="Euler-Maruyama steps of the Ito reverse SDE")
    p.add_argument("--strat-steps", type=int, default=None,
                   help="Heun steps of the Stratonovich reverse SDE (0: skip; the default skips it with --quick)")
    p.add_argument("--align-num", type=int, default=None, help="latents for score alignment")
    p.add_argument("--align-steps", type=int, default=None, help="constant Tsit5 steps of the alignment solves")
    p.add_argument("--align-probes", type=int, default=None, help="Hutchinson probes of the score-free form")
    p.add_argument("--t-end", type=float, default=0.05, help="time where score alignment is measured")
    args = p.parse_args(argv)
    model = C.load_model(args.model)
    cfg = C.settings(args,
                     full=dict(track_probes=4, sde_steps=500, strat_steps=200, align_num=32, align_steps=16,
                               align_probes=4),
                     quick=dict(track_probes=1, sde_steps=200, strat_steps=0, align_num=8, align_steps=12,
                                align_probes=2),
                     large=dict(num=32, batch=32, align_num=16), dim=model.dim)
    cfg["t_end"] = args.t_end
    run = C.Run(NAME, args, argv, cfg)
    n, b = cfg["num"], cfg["batch"]
    ekw = dict(steps=cfg["encode_steps"], probes=cfg["encode_probes"], batch=b)
    x_T = C.latents(model, args.seed, n)
    table, samples = [], []

    # 1. PF-ODE: tracked vs re-encoded
    run.log(f"model {model.name!r} (D={model.dim}); PF-ODE, {n} samples, tracked with {cfg['track_probes']} probes")
    x, tr = C.pf_ode(args.model, x_T, C.rng_key(args.seed, 1), steps=cfg["steps"], probes=cfg["track_probes"], batch=b)
    enc = C.encode(args.model, x, C.rng_key(args.seed, 2), **ekw)
    enc2 = C.encode(args.model, x, C.rng_key(args.seed, 3), **ekw)
    table.append(dict(pair="pfode_tracked_vs_reencoded", **_pair(tr, enc)))
    table.append(dict(pair="pfode_reencoded_vs_reencoded (noise ceiling)", **_pair(enc2, enc)))
    samples += [dict(pair="pfode", i=i, a=tr[i], b=enc[i], b2=enc2[i]) for i in range(n)]
    run.log(f"PF-ODE: r = {table[0]['pearson']:.4f} (re-encoding twice: {table[1]['pearson']:.4f})")

    # 2. reverse SDE: tracked (free, Ito; Stratonovich with the Laplacian) vs PF-ODE re-encoding
    schemes = [("ito", cfg["sde_steps"])] + ([("stratonovich", cfg["strat_steps"])] if cfg["strat_steps"] else [])
    sde_pts = {}
    for k, (scheme, steps) in enumerate(schemes):
        prog = _sde_program(args.model, steps, scheme, cfg["track_probes"])
        xs, trs = C.batched(prog, x_T, C.rng_key(args.seed, 20 + k, 1), b)
        encs = C.encode(args.model, xs, C.rng_key(args.seed, 20 + k, 2), **ekw)
        table.append(dict(pair=f"reverse_sde_{scheme}_tracked_vs_pfode_reencoded", steps=steps, **_pair(trs, encs)))
        samples += [dict(pair=f"sde_{scheme}", i=i, a=trs[i], b=encs[i]) for i in range(n)]
        sde_pts[scheme] = (trs, encs)
        run.log(f"reverse SDE ({scheme}, {steps} steps): r = {table[-1]['pearson']:.4f}, "
                f"bias {table[-1]['mean_diff']:+.2f} nats")

    # 3. score alignment: score form vs score-free form
    na = cfg["align_num"]
    x_A = x_T[:na] if na <= n else C.latents(model, args.seed + 1, na)
    ab = min(b, na)
    val = C.batched(_align_program(args.model, cfg["t_end"], cfg["align_steps"], False, 1), x_A,
                    C.rng_key(args.seed, 30), ab)
    val_free = C.batched(_align_program(args.model, cfg["t_end"], cfg["align_steps"], True, cfg["align_probes"]),
                         x_A, C.rng_key(args.seed, 31), ab)
    agree = float(np.mean(np.sign(val) == np.sign(val_free)))
    table.append(dict(pair="alignment_score_vs_score_free", sign_agreement=agree,
                      aligned_fraction_score=np.mean(val > 0), aligned_fraction_score_free=np.mean(val_free > 0),
                      **_pair(val, val_free)))
    samples += [dict(pair="alignment", i=i, a=val[i], b=val_free[i]) for i in range(na)]
    run.log(f"score alignment: r = {table[-1]['pearson']:.4f}, sign agreement {agree:.3f}")

    run.csv("table.csv", table)
    run.csv("samples.csv", samples)
    t = {r["pair"]: r for r in table}
    pf, ito = t["pfode_tracked_vs_reencoded"], t["reverse_sde_ito_tracked_vs_pfode_reencoded"]
    al = t["alignment_score_vs_score_free"]
    strat = t.get("reverse_sde_stratonovich_tracked_vs_pfode_reencoded")
    run.headline(
        f"consistency on {model.name!r}: PF-ODE tracked vs re-encoded r = {pf['pearson']:.3f} (two re-encodings: "
        f"{t['pfode_reencoded_vs_reencoded (noise ceiling)']['pearson']:.3f}); reverse-SDE tracked vs PF-ODE "
        f"re-encoded r = {ito['pearson']:.3f} (Ito, {cfg['sde_steps']} steps, bias {ito['mean_diff']:+.1f} nats)"
        + (f", {strat['pearson']:.3f} (Stratonovich, {cfg['strat_steps']} steps, bias {strat['mean_diff']:+.1f})"
           if strat else "")
        + f"; score alignment, score vs score-free r = {al['pearson']:.3f}, same sign {agree:.0%} "
          f"(aligned {al['aligned_fraction_score']:.0%} / {al['aligned_fraction_score_free']:.0%})",
        pfode_pearson=pf["pearson"], pfode_noise_ceiling=t["pfode_reencoded_vs_reencoded (noise ceiling)"]["pearson"],
        pfode_mean_diff=pf["mean_diff"], sde_ito_pearson=ito["pearson"], sde_ito_bias=ito["mean_diff"],
        sde_strat_pearson=strat["pearson"] if strat else None, sde_strat_bias=strat["mean_diff"] if strat else None,
        align_pearson=al["pearson"], align_sign_agreement=agree)

    plt = C.pyplot()
    panels = [("PF-ODE log p", tr, enc, "tracked while sampling", "re-encoded")]
    panels += [(f"reverse SDE ({s}) log p", *sde_pts[s], "tracked along the SDE", "PF-ODE re-encoded") for s in sde_pts]
    panels += [("score alignment", val, val_free, "score form", "score-free form")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4))
    for ax, (title, a, bb, xl, yl) in zip(axes, panels, strict=True):
        ax.scatter(a, bb, s=10, alpha=0.7)
        lo, hi = float(min(np.min(a), np.min(bb))), float(max(np.max(a), np.max(bb)))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(title=f"{title}\nr = {C.pearson(a, bb):.3f}", xlabel=xl, ylabel=yl)
    fig.tight_layout()
    run.figure("consistency.png", fig)
    return run.finish()


if __name__ == "__main__":
    main()
