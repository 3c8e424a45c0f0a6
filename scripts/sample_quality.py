"""Sample quality of a digits model: how many of its samples a classifier of real digits reads confidently.

The classifier: scikit-learn's ``LogisticRegression(C=0.5)`` fitted on the 1500 real training digits of
``dg.load_dataset("digits")`` (features: the 64 grey levels 0..16, divided by 16; labels from scikit-learn's
``load_digits`` in the data set's fixed split). Samples are mapped to the same features by the data set's
inverse transform (``floor((x + 1) 17 / 2)`` clipped to 0..16), so a sample is scored exactly as a real digit.

Measured per configuration (the same N prior latents in every one): the fraction of samples whose top class
has probability >= ``--threshold`` (0.9), the classes covered (distinct top classes among those confident
samples, of 10), the mean top probability, the mean tracked log p (nats, docs/math.md 4) and bits/dim. The
configurations: the PF-ODE (``dg.PFODE``) and density guidance ``dg.DensityGuidance(q)`` at a few q (default
0.3, 0.6), adaptive Tsit5 at rtol = atol = ``--rtol`` (1e-4), or constant ``--steps`` (--quick: 6 steps,
8 latents, q = 0.6). The reference row "real test digits" is the classifier on the 297 held-out real digits
(the ceiling: about 0.59 of them clear p >= 0.9).

Files: ``table.csv`` (one row per configuration), ``samples.csv`` (per sample: class, probability, log p),
``grid.png`` (one row per configuration, the same latents in every column), ``summary.json``.

    python scripts/sample_quality.py [--quick] [--model digits|digits-flow|RUN_DIR|FILE.msgpack] [--num 128]
"""

from __future__ import annotations

import os
import sys
from functools import cache

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "sample_quality"


@cache
def classifier(c: float = 0.5):
    """(fitted LogisticRegression, held-out features (297, 64), held-out labels (297,)) on real digits."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import dgjax as dg

    ds = dg.load_dataset("digits")
    labels = load_digits().target
    perm = np.random.default_rng(0).permutation(len(labels))  # the split of dgjax/data.py (_digits_raw)
    x_tr, x_te = ds.raw("train"), ds.raw("test")
    y_tr, y_te = labels[perm[:1500]], labels[perm[1500:]]
    # the split must be the data set's own: the images we index must be the ones the labels belong to
    imgs = load_digits().images.astype(np.uint8)[..., None]
    if not (np.array_equal(imgs[perm[:1500]], x_tr) and np.array_equal(imgs[perm[1500:]], x_te)):
        raise RuntimeError("digits split of dgjax/data.py changed; update sample_quality.classifier")
    clf = LogisticRegression(C=c, max_iter=5000)
    clf.fit(features(x_tr), y_tr)
    return clf, features(x_te), y_te


def features(levels) -> np.ndarray:
    """(N, 8, 8, 1) grey levels 0..16 -> (N, 64) in [0, 1]."""
    return np.asarray(levels, np.float64).reshape(len(levels), -1) / 16.0


def score_samples(clf, levels, threshold: float) -> dict:
    prob = clf.predict_proba(features(levels))
    top, cls = prob.max(axis=1), prob.argmax(axis=1)
    conf = top >= threshold
    return dict(top=top, cls=cls, confident=conf, frac_confident=float(conf.mean()),
                classes_covered=int(len(np.unique(cls[conf]))), classes_argmax=int(len(np.unique(cls))),
                mean_top_prob=float(top.mean()))


@cache
def _adaptive_program(model_name: str, rtol: float):
    """jit(x_T, q, key) -> (x, tracked log p): ``dg.DensityGuidance(q, start_at_median=False)`` from the
    latents as given, adaptive Tsit5; at q = 0.5 it is exactly the PF-ODE (Phi^{-1}(0.5) = 0), so one
    program serves every configuration (as ``_common.guided`` does with constant steps)."""
    import jax

    import dgjax as dg

    model = C.load_model(model_name)

    @jax.jit
    def run(x_T, q, key):
        out = dg.sample(model.score, model.process, x_T, sampler=dg.DensityGuidance(q, start_at_median=False),
                        key=key, track_logp=True, rtol=rtol, atol=rtol, max_steps=4096)
        return out.x, out.logp

    return run


def draw(model_name: str, model, x_T, q, key, cfg):
    """PF-ODE samples (q None) from x_T, or density guidance at q from x_T rescaled to the median radius
    (as ``dg.DensityGuidance(q)`` starts). Returns (x, tracked log p) as numpy arrays."""
    import jax.numpy as jnp

    x0 = x_T if q is None else C.median_latents(model, x_T)
    qq = 0.5 if q is None else q
    if cfg["steps"]:
        return C.guided(model_name, x0, qq, key, steps=cfg["steps"], probes=1, batch=cfg["batch"])
    return C.batched(_adaptive_program(model_name, cfg["rtol"]), x0, key, cfg["batch"], jnp.float32(qq))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = C.make_parser(NAME, __doc__)
    p.add_argument("--q", type=float, nargs="*", default=None,
                   help="density-guidance quantiles in (0, 1) besides the PF-ODE (default 0.3 0.6; 0.6 with --quick)")
    p.add_argument("--rtol", type=float, default=1e-4, help="rtol = atol of the adaptive solves (without --steps)")
    p.add_argument("--threshold", type=float, default=0.9, help="classifier probability counted as confident")
    p.add_argument("--grid-cols", type=int, default=16, help="samples shown per grid row")
    args = p.parse_args(argv)
    import dgjax as dg

    if args.q and not all(0 < q < 1 for q in args.q):
        p.error(f"--q: quantiles must lie in (0, 1); got {args.q}")
    if not 0 < args.threshold < 1:
        p.error(f"--threshold: must lie in (0, 1); got {args.threshold}")
    model = C.load_model(args.model)
    if model.config.get("data") != "digits":
        p.error(f"--model: the classifier reads 8x8 digits; {args.model!r} was trained on {model.config.get('data')!r}")
    # quick: constant steps (cheap, compiles fast); full: adaptive rtol 1e-4 unless --steps is given
    cfg = C.settings(args, full=dict(num=128, steps=None, q=[0.3, 0.6]), quick=dict(q=[0.6]))
    if args.q is not None:
        cfg["q"] = sorted(args.q)
    cfg.update(rtol=args.rtol, threshold=args.threshold)
    run = C.Run(NAME, args, argv, cfg)
    n, cols = cfg["num"], min(args.grid_cols, cfg["num"])
    solve = f"{cfg['steps']} Tsit5 steps" if cfg["steps"] else f"adaptive Tsit5, rtol = atol = {cfg['rtol']:g}"

    clf, x_te, y_te = classifier(0.5)
    prob_te = clf.predict_proba(x_te)
    real_conf = prob_te.max(axis=1) >= cfg["threshold"]
    rows = [dict(config="real test digits", q=float("nan"), n=len(y_te), frac_confident=real_conf.mean(),
                 classes_covered=len(np.unique(prob_te.argmax(1)[real_conf])),
                 classes_argmax=len(np.unique(prob_te.argmax(1))), mean_top_prob=prob_te.max(1).mean(),
                 test_accuracy=float((prob_te.argmax(1) == y_te).mean()), mean_logp=float("nan"),
                 bits_per_dim=float("nan"))]
    run.log(f"classifier (C=0.5) on real held-out digits: accuracy {rows[0]['test_accuracy']:.3f}, "
            f"{rows[0]['frac_confident']:.3f} with p >= {cfg['threshold']:g}")

    x_T = C.latents(model, args.seed, n)
    configs = [("PF-ODE", None)] + [(f"DG q={q:g}", float(q)) for q in cfg["q"]]
    per_sample, grid, labels = [], [], []
    run.log(f"model {model.name!r} ({model.config.get('objective', 'eps')}, {model.parametrization} on "
            f"{type(model.process).__name__}); {n} latents per configuration, {solve}")
    for k, (label, q) in enumerate(configs):
        try:
            with dg.errors.typed_errors():  # infeasible upward guidance is refused at run time (docs/math.md 5)
                x, lp = draw(args.model, model, x_T, q, C.rng_key(args.seed, k), cfg)
        except dg.InfeasibleGuidance:
            run.log(f"{label}: infeasible (docs/math.md 5), skipped")
            rows.append(dict(config=label, q=q, n=0, frac_confident=float("nan")))
            continue
        levels = model.dataset.transform.to_data(x)
        s = score_samples(clf, levels, cfg["threshold"])
        rows.append(dict(config=label, q=q if q is not None else 0.5, n=n, frac_confident=s["frac_confident"],
                         classes_covered=s["classes_covered"], classes_argmax=s["classes_argmax"],
                         mean_top_prob=s["mean_top_prob"], test_accuracy=float("nan"), mean_logp=lp.mean(),
                         bits_per_dim=C.bits_per_dim(model, lp).mean()))
        per_sample += [dict(config=label, i=i, cls=int(s["cls"][i]), prob=s["top"][i], confident=int(s["confident"][i]),
                            logp=lp[i]) for i in range(n)]
        grid.append(x[:cols])
        labels.append(f"{label}: {100 * s['frac_confident']:.0f}% p>={cfg['threshold']:g}, "
                      f"{s['classes_covered']} cl.")
        r = rows[-1]
        run.log(f"{label:>10}: {r['frac_confident']:.3f} with p >= {cfg['threshold']:g}, classes "
                f"{r['classes_covered']}/10 (argmax {r['classes_argmax']}), mean top p {r['mean_top_prob']:.3f}, "
                f"mean log p {r['mean_logp']:.1f} nats ({r['bits_per_dim']:.3f} bits/dim)")
    run.csv("table.csv", rows)
    run.csv("samples.csv", per_sample)
    run.grid("grid.png", np.stack(grid), model, labels=labels,
             title=f"{model.name}: one latent per column ({solve})")

    pf, real = rows[1], rows[0]
    dg_rows = [r for r in rows[2:] if r["n"]]
    dg_txt = "; ".join(f"{r['config']}: {100 * r['frac_confident']:.0f}%, {r['classes_covered']} classes"
                       for r in dg_rows)
    run.headline(f"{model.name!r}: {100 * pf['frac_confident']:.0f}% of {n} PF-ODE samples classified with "
                 f"p >= {cfg['threshold']:g} (real held-out digits: {100 * real['frac_confident']:.0f}%), "
                 f"{pf['classes_covered']}/10 classes covered; {dg_txt}",
                 pfode_frac_confident=pf["frac_confident"], pfode_classes_covered=pf["classes_covered"],
                 real_frac_confident=real["frac_confident"], real_accuracy=real["test_accuracy"],
                 pfode_mean_logp=pf["mean_logp"], dg_q=[r["q"] for r in dg_rows],
                 dg_frac_confident=[r["frac_confident"] for r in dg_rows],
                 dg_classes_covered=[r["classes_covered"] for r in dg_rows],
                 dg_mean_logp=[r["mean_logp"] for r in dg_rows],
                 heldout_bits_per_dim=model.config.get("heldout_bits_per_dim"),
                 train_time_s=model.config.get("train_time_s"))
    return run.finish()


if __name__ == "__main__":
    main()
