"""Time from a score that turns NaN to dgjax's typed error (issue 24, item 6), on the shipped ``digits`` UNet.

The score returns NaN below (for sampling) or above (for the likelihood, which integrates upward in t) the
time ``--t-nan``; the adaptive solve must stop at the first non-finite step and raise ``dg.NonFiniteError``
naming the time reached, not run to ``max_steps``. For each entry point the table gives the wall seconds of
the first call (compilation included), of a second call (the compiled program: the run time to the error),
the same program on the healthy score (a full solve), and the error. Called as they are (dgjax compiles them
itself) and under the caller's own ``jax.jit`` (with ``dgjax.errors.typed_errors`` around the call).

    python benchmarks/bench_nan_to_error.py
    python benchmarks/bench_nan_to_error.py --quick     # N = 1
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import dgjax as dg
from dgjax.errors import typed_errors

try:
    from benchmarks._common import save_json
except ImportError:  # run as a script from benchmarks/
    from _common import save_json


def _call(fn, *args):
    """(seconds, the error raised or None)."""
    t0 = time.perf_counter()
    try:
        with typed_errors():  # under the caller's own jax.jit, XLA's runtime error -> the typed error
            jax.block_until_ready(fn(*args))
        err = None
    except dg.DgjaxError as e:
        err = e
    return time.perf_counter() - t0, err


def nan_to_error_rows(n: int = 2, t_nan: float = 0.5) -> list:
    model = dg.load_model("digits")
    score, process = model.score, model.process
    below = lambda x, t: jnp.where(jnp.asarray(t) < t_nan, jnp.nan, score(x, t))  # noqa: E731
    above = lambda x, t: jnp.where(jnp.asarray(t) > t_nan, jnp.nan, score(x, t))  # noqa: E731
    x_T = model.prior_sample(jax.random.key(0), n)
    x_0 = jnp.asarray(model.dataset.split("test", n))
    key = jax.random.key(1)
    sample = lambda s: lambda x: dg.sample(s, process, x, key=key, track_logp=True).logp  # noqa: E731
    likelihood = lambda s: lambda x: dg.log_likelihood(s, process, x, key=key).logp  # noqa: E731
    cases = {
        "dg.sample (PF-ODE, tracked)": (sample, below, x_T),
        "dg.log_likelihood": (likelihood, above, x_0),
        "jax.jit(dg.sample)": (lambda s: jax.jit(sample(s)), below, x_T),
        "jax.jit(dg.log_likelihood)": (lambda s: jax.jit(likelihood(s)), above, x_0),
    }
    rows = []
    for name, (make, bad, x) in cases.items():
        fn_bad = make(bad)
        first, _ = _call(fn_bad, x)  # compiles, then runs to the error
        run, err3 = _call(fn_bad, x)
        fn_ok = make(score)
        _call(fn_ok, x)
        healthy, _ = _call(fn_ok, x)
        row = {"entry": name, "first_call_s": first, "compiled_call_s": run, "healthy_full_solve_s": healthy,
               "error": type(err3).__name__ if err3 is not None else None,
               "message": str(err3).splitlines()[0][:200] if err3 is not None else None}
        rows.append(row)
        print(f"{name:30s} first call {first:6.1f} s   compiled run to the error {run:6.2f} s   healthy full solve "
              f"{healthy:6.2f} s   -> {row['error']}: {row['message']}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--t-nan", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = nan_to_error_rows(1 if args.quick else args.n, args.t_nan)
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
