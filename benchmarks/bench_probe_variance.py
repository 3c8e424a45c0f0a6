"""Spread of the PF-ODE log-likelihood across Hutchinson probe keys at equal cost (issue 25, item 2).

For a few fixed samples x, ``dg.log_likelihood`` is run with P independent probe keys (one solve: the batch
holds P copies of each sample, and every row draws its own probes), and the standard deviation of log p over
the keys is taken per sample (root mean square over the samples). The reference is the published estimator:
one Rademacher probe held fixed along the path. Every estimator gets (about) the same score evaluations per
sample: constant Tsit5 steps, ``steps`` for one probe per evaluation, fewer for K probes so that
(1 + 6 S)(1 + K) matches. The solver error is the same for every one-probe row (same x path), so the spread
is the probe noise alone.

    python benchmarks/bench_probe_variance.py            # oracle D = 3072, digits UNet, galaxies-hsc32
    python benchmarks/bench_probe_variance.py --quick

Estimators (``dgjax.divergence``): ``Hutchinson()`` fixed (reference), ``Hutchinson(distribution="gaussian")``
fixed, ``StepwiseHutchinson()`` (Rademacher probes redrawn every step, orthogonal Hadamard cycle),
``StepwiseHutchinson(distribution="gaussian")`` (independent per-step draws), and three probes per evaluation
at half the steps (equal NFE): ``Hutchinson(3)`` and ``OrthogonalHutchinson(3)`` fixed, ``StepwiseHutchinson(3)``.
The spread is heavy-tailed (a fixed probe that lines up with the Jacobian's off-diagonal part once gives an
error far beyond the others): ``mad`` is also given, 1.4826 x the median absolute deviation (= std for normal
noise).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import dgjax as dg

try:
    from benchmarks._common import save_json
except ImportError:  # run as a script from benchmarks/
    from _common import save_json


def estimators(steps: int) -> dict:
    """name -> (divergence, steps) at about equal NFE per sample: (1 + 6 S)(1 + K) for Tsit5 (FSAL)."""
    s3 = max(1, round(((1 + 6 * steps) * 2 / 4 - 1) / 6))
    return {
        "Hutchinson fixed (reference)": (dg.Hutchinson(), steps),
        "Hutchinson fixed, Gaussian": (dg.Hutchinson(distribution="gaussian"), steps),
        "StepwiseHutchinson (Hadamard cycle)": (dg.StepwiseHutchinson(), steps),
        "StepwiseHutchinson, Gaussian": (dg.StepwiseHutchinson(distribution="gaussian"), steps),
        "Hutchinson(3) fixed": (dg.Hutchinson(3), s3),
        "OrthogonalHutchinson(3) fixed": (dg.OrthogonalHutchinson(3), s3),
        "StepwiseHutchinson(3)": (dg.StepwiseHutchinson(3), s3),
    }


def spread(score, process, x, divergence, steps, keys: int, seed: int = 0):
    """(RMS over samples of the std of log p across ``keys`` probe keys, the same of 1.4826 x the median absolute
    deviation, NFE per sample, seconds)."""
    n = x.shape[0]
    xs = jnp.repeat(x, keys, axis=0)  # row i * keys + j: sample i, key j (every row draws its own probes)
    fn = jax.jit(lambda xx, k: dg.log_likelihood(score, process, xx, key=k, divergence=divergence, steps=steps))
    start = time.perf_counter()
    out = fn(xs, jax.random.key(seed))
    logp = np.asarray(out.logp, np.float64).reshape(n, keys)
    seconds = time.perf_counter() - start
    mad = 1.4826 * np.median(np.abs(logp - np.median(logp, axis=1, keepdims=True)), axis=1)
    return float(np.sqrt(np.mean(np.var(logp, axis=1, ddof=1)))), float(np.sqrt(np.mean(mad**2))), int(out.nfe), seconds


def models(names, n: int, dim: int = 3072):
    """name -> (score, process, x (n, *shape)): fixed samples from each model's own data."""
    out = {}
    for name in names:
        if name == "oracle":
            p = dg.VP()
            shape = (32, 32, 3) if dim == 3072 else (dim,)
            gm = dg.random_mixture(jax.random.key(0), 5, shape, mean_scale=0.5, var_range=(0.01, 0.2))
            out[name] = (gm.score(p), p, gm.sample(jax.random.key(1), n))
        elif name == "digits":
            m = dg.load_model("digits")
            ds = m.dataset
            out[name] = (m.score, m.process, jnp.asarray(ds.split("test", n)))
        else:
            m = dg.load_model(name)
            x = dg.sample(m.score, m.process, m.prior_sample(jax.random.key(2), n), steps=32).x
            out[name] = (m.score, m.process, x)
    return out


def probe_variance_rows(names, n: int = 2, keys: int = 16, steps: int = 32, dim: int = 3072) -> list:
    """The benchmark's rows (model, estimator, steps, nfe, std_logp, mad_logp, ratio, seconds), printed as they come."""
    rows = []
    for name, (score, process, x) in models(names, n, dim).items():
        ref = None
        for label, (div, st) in estimators(steps).items():
            std, mad, nfe, sec = spread(score, process, x, div, st, keys)
            ref = std if ref is None else ref
            rows.append({"model": name, "estimator": label, "steps": st, "nfe": nfe, "std_logp": std,
                         "mad_logp": mad, "ratio": std / ref, "seconds": sec})
            print(f"{name:15s} {label:38s} steps {st:4d}  NFE {nfe:5d}  std log p {std:9.4f}  (mad {mad:8.4f})  "
                  f"x{std / ref:6.3f} of fixed Rademacher  ({sec:.1f}s)", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["oracle", "digits", "galaxies-hsc32"])
    ap.add_argument("--n", type=int, default=2, help="fixed samples per model")
    ap.add_argument("--keys", type=int, default=16, help="probe keys per sample")
    ap.add_argument("--steps", type=int, default=32, help="constant Tsit5 steps of the one-probe rows")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.keys, args.steps, args.models = 2, 4, 4, ["oracle"]
    rows = probe_variance_rows(args.models, args.n, args.keys, args.steps, dim=192 if args.quick else 3072)
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
