"""Spread of the PF-ODE log-likelihood across Hutchinson probe keys at equal NFE (issue 25, item 2).

For n fixed samples x, ``dg.log_likelihood`` runs with P probe keys (one solve: the batch holds P copies of
each sample, and every row draws its own probes). Per row of the table (an estimator with a solver and a
number of constant steps):

- ``std``: the spread of log p over the keys, sqrt(mean over samples of the variance over keys) (nats), and
  ``mad``: the same with 1.4826 x the median absolute deviation (= std for normal noise; the spread of a
  fixed probe is heavy-tailed: one that lines up with the Jacobian's off-diagonal part gives an error far
  beyond the others).
- ``ratio``: std over the reference's std, the reference being the published estimator: one Rademacher
  probe held fixed along the path (``dg.Hutchinson()``), constant Tsit5 steps. Its standard error ``ratio_se``
  and ``ratio_hi``, a one-sided 97.5% upper bound, come from a bootstrap over the samples, and over the keys
  within each sample, independently for the two rows.
- ``per_sample``: the median and the largest over the samples of each sample's own std ratio (robust to a
  reference whose spread one sample dominates).
- ``nfe``: score evaluations per sample as ``dg.log_likelihood`` counts them (a JVP counts as one more). Every
  row is set to the reference's NFE: Tsit5 (FSAL) costs (1 + 6 S)(1 + K) for S steps and K probes per
  evaluation, Heun 2 S (1 + K); K = 3 probes get fewer steps.
- ``solve_err``: the discretisation error of that solver and step count, which no probe choice removes: the
  mean over samples and keys of log p with a fixed probe under it minus log p with the same probe under
  adaptive Tsit5 at rtol = atol = 1e-6 (so the probe noise cancels; in expectation over probes it is the
  exact-divergence solve's error, i.e. every unbiased estimator's bias under that solver); RMS over samples.
- ``seconds``: the wall time of that row's solve (compiled), for the whole batch.

Estimators (``dgjax.divergence``): ``Hutchinson()`` fixed (reference); ``StepwiseHutchinson()`` (the default
of ``dg.log_likelihood`` under constant steps: Rademacher probes redrawn twice a step, rows of a randomly
signed Hadamard matrix in a scrambled order) with Tsit5 and with Heun at 3x the steps (Heun's two stages at a
step end share one probe, so each node of the trapezoid rule gets its own), and with one draw a step
(``draws_per_step=1``); ``StepwiseHutchinson(3)``;
``OrthogonalHutchinson(3)`` and ``Hutchinson(3)`` fixed; ``--estimators all`` adds the Gaussian-probe rows,
``core`` (``run_all.py``) keeps the reference, the default, one draw a step and ``StepwiseHutchinson(3)``.
Models: the Gaussian-mixture oracle (D = 3072, 5 components: x drawn from it), the shipped ``digits`` UNet
(its test split) and ``galaxies-hsc32`` (samples of its own, 32 Tsit5 steps).

    python benchmarks/bench_probe_variance.py                       # all three models, n = 8, 16 keys
    python benchmarks/bench_probe_variance.py --models digits --n 4 --keys 32
    python benchmarks/bench_probe_variance.py --quick               # oracle D = 192, a smoke run
"""

from __future__ import annotations

import argparse
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

import dgjax as dg

try:
    from benchmarks._common import save_json
except ImportError:  # run as a script from benchmarks/
    from _common import save_json

REFERENCE = "Hutchinson() fixed (reference)"
DEFAULT = "StepwiseHutchinson() (default)"


def estimators(steps: int, which: str = "default") -> dict:
    """name -> (divergence, solver, steps) at the NFE of one probe with ``steps`` Tsit5 steps, 2 (1 + 6 S)."""
    s3 = max(1, round(((1 + 6 * steps) * 2 / 4 - 1) / 6))  # Tsit5, K = 3: (1 + 6 S')(1 + 3)
    tsit5, heun = dfx.Tsit5(), dfx.Heun()
    rows = {
        REFERENCE: (dg.Hutchinson(), tsit5, steps),
        DEFAULT: (dg.StepwiseHutchinson(), tsit5, steps),
        "StepwiseHutchinson(draws_per_step=1)": (dg.StepwiseHutchinson(draws_per_step=1), tsit5, steps),
        "StepwiseHutchinson(), Heun": (dg.StepwiseHutchinson(), heun, 3 * steps),  # 2 S' 2 = 12 S
        "StepwiseHutchinson(3)": (dg.StepwiseHutchinson(3), tsit5, s3),
        "StepwiseHutchinson(3), Heun": (dg.StepwiseHutchinson(3), heun, max(1, round(1.5 * steps))),  # 2 S' 4
        "OrthogonalHutchinson(3) fixed": (dg.OrthogonalHutchinson(3), tsit5, s3),
        "Hutchinson(3) fixed": (dg.Hutchinson(3), tsit5, s3),
    }
    if which == "core":  # run_all's rows
        core = (REFERENCE, DEFAULT, "StepwiseHutchinson(draws_per_step=1)", "StepwiseHutchinson(3)")
        rows = {k: rows[k] for k in core}
    if which == "all":
        rows["Hutchinson(gaussian) fixed"] = (dg.Hutchinson(distribution="gaussian"), tsit5, steps)
        rows["StepwiseHutchinson(gaussian)"] = (dg.StepwiseHutchinson(distribution="gaussian"), tsit5, steps)
    return rows


def log_p_over_keys(score, process, x, divergence, keys: int, seed: int = 0, **solve):
    """(log p (n, keys), NFE per sample, seconds of the compiled run): ``keys`` probe keys per sample."""
    n = x.shape[0]
    xs = jnp.repeat(x, keys, axis=0)  # row i * keys + j: sample i, key j (every row draws its own probes)
    key = jax.random.key(seed)
    fn = jax.jit(lambda xx, k: dg.log_likelihood(score, process, xx, key=k, divergence=divergence, **solve))
    fn = fn.lower(xs, key).compile()  # compiled ahead, not run: the time below is the solve alone
    start = time.perf_counter()
    out = jax.block_until_ready(fn(xs, key))
    seconds = time.perf_counter() - start
    return np.asarray(out.logp, np.float64).reshape(n, keys), int(out.nfe), seconds


def spread(logp: np.ndarray) -> tuple[float, float]:
    """(sqrt(mean over samples of the variance over keys), the same of 1.4826 x the median absolute deviation)."""
    mad = 1.4826 * np.median(np.abs(logp - np.median(logp, axis=1, keepdims=True)), axis=1)
    return float(np.sqrt(np.mean(np.var(logp, axis=1, ddof=1)))), float(np.sqrt(np.mean(mad**2)))


def ratio_and_se(ref: np.ndarray, est: np.ndarray, boots: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """std(est) / std(ref) (``spread``), its bootstrap standard error and the bootstrap's 97.5th percentile (a
    one-sided 97.5% upper bound; the SE alone misleads when the reference's spread is heavy-tailed): samples
    resampled (the same ones for both), and the keys within each sample, independently for the two (their
    probes are independent)."""
    rng = np.random.default_rng(seed)
    n, p = ref.shape
    ratio = spread(est)[0] / spread(ref)[0]
    out = np.empty(boots)
    rows = np.arange(n)[:, None]
    for b in range(boots):
        i = rng.integers(0, n, n)
        r = ref[i][rows, rng.integers(0, p, (n, p))]
        e = est[i][rows, rng.integers(0, est.shape[1], (n, est.shape[1]))]
        out[b] = np.sqrt(np.mean(np.var(e, axis=1, ddof=1)) / np.mean(np.var(r, axis=1, ddof=1)))
    return float(ratio), float(np.std(out, ddof=1)), float(np.quantile(out, 0.975))


def fixed_probe_log_p(score, process, x, keys: int = 4, **solve) -> np.ndarray:
    """log p (n, keys) with ``keys`` fixed Rademacher probes per sample (the same ones on every call)."""
    xs = jnp.repeat(x, keys, axis=0)
    fn = jax.jit(lambda xx, k: dg.log_likelihood(score, process, xx, key=k, divergence=dg.Hutchinson(), **solve))
    return np.asarray(fn(xs, jax.random.key(11)).logp, np.float64).reshape(x.shape[0], keys)


def solve_error(logp: np.ndarray, tight: np.ndarray) -> float:
    """RMS over samples of the mean over keys of ``logp - tight`` (``fixed_probe_log_p`` under a solver and under
    adaptive Tsit5 at rtol = atol = 1e-6): the discretisation error alone, the probe noise cancelling."""
    return float(np.sqrt(np.mean(np.mean(logp - tight, axis=1) ** 2)))


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
            out[name] = (m.score, m.process, jnp.asarray(m.dataset.split("test", n)))
        else:
            m = dg.load_model(name)
            x = dg.sample(m.score, m.process, m.prior_sample(jax.random.key(2), n), steps=32).x
            out[name] = (m.score, m.process, x)
    return out


def probe_variance_rows(names, n: int = 8, keys: int = 16, steps: int = 32, dim: int = 3072,
                        which: str = "default") -> list:
    """The benchmark's rows (dicts with model, estimator, solver, steps, nfe, std_logp, mad_logp, ratio,
    ratio_se, ratio_hi, per_sample_median, per_sample_max, solve_err, n, keys, seconds and logp, the (n, keys)
    values), printed as they come."""
    rows = []
    for name, (score, process, x) in models(names, n, dim).items():
        ref, errs = None, {}
        tight = fixed_probe_log_p(score, process, x, rtol=1e-6, atol=1e-6)
        for label, (div, solver, st) in estimators(steps, which).items():
            logp, nfe, sec = log_p_over_keys(score, process, x, div, keys, solver=solver, steps=st)
            ref = logp if ref is None else ref
            std, mad = spread(logp)
            ratio, se, hi = ratio_and_se(ref, logp) if label != REFERENCE else (1.0, 0.0, 1.0)
            own = np.sqrt(np.var(logp, axis=1, ddof=1) / np.var(ref, axis=1, ddof=1))
            cfg = (type(solver).__name__, st)
            if cfg not in errs:
                errs[cfg] = solve_error(fixed_probe_log_p(score, process, x, solver=solver, steps=st), tight)
            rows.append({"model": name, "estimator": label, "solver": cfg[0], "steps": st, "nfe": nfe,
                         "std_logp": std, "mad_logp": mad, "ratio": ratio, "ratio_se": se, "ratio_hi": hi,
                         "per_sample_median": float(np.median(own)), "per_sample_max": float(np.max(own)),
                         "solve_err": errs[cfg], "n": n, "keys": keys, "seconds": sec, "logp": logp.tolist()})
            print(f"{name:15s} {label:36s} {cfg[0]:5s} x{st:<4d} NFE {nfe:5d}  std log p {std:9.4f} (mad {mad:8.4f})  "
                  f"ratio {ratio:6.3f} +- {se:5.3f} (<= {hi:6.3f}; per sample {np.median(own):5.3f}, "
                  f"max {np.max(own):5.3f})  solve err {errs[cfg]:8.4f}  ({sec:.1f}s)", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["oracle", "digits", "galaxies-hsc32"])
    ap.add_argument("--n", type=int, default=8, help="fixed samples per model")
    ap.add_argument("--keys", type=int, default=16, help="probe keys per sample")
    ap.add_argument("--steps", type=int, default=32, help="constant Tsit5 steps of the one-probe rows")
    ap.add_argument("--estimators", choices=("core", "default", "all"), default="default")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.keys, args.steps, args.models = 2, 4, 4, ["oracle"]
    rows = probe_variance_rows(args.models, args.n, args.keys, args.steps, dim=192 if args.quick else 3072,
                               which=args.estimators)
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
