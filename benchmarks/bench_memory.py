"""Peak memory per sample of each sampler (issue 8), from XLA's own accounting of the compiled program.

For every sampler the jitted ``dg.sample`` (and ``dg.log_likelihood``, ``dg.score_alignment``) on the shipped
digits model (UNet, 1.0 M parameters, D = 64) is compiled -- not run -- for two batch sizes N1 < N2, and
``compiled.memory_analysis()`` gives the scratch (``temp``) bytes; arguments and outputs (x_T, keys, x,
log p: a few hundred bytes per sample) come on top. The per-sample cost is the slope
(temp(N2) - temp(N1)) / (N2 - N1): activations of one score evaluation (with its JVPs for the Hutchinson
probes / tangent) plus the solver state and the Runge-Kutta stages; the fixed part (temp(N1) - N1 x slope)
is batch-independent workspace. No gradient is requested, so none of this grows with the number of steps
(tests/test_scale.py checks 8 vs 64 steps); the last row, a gradient through the PF-ODE solve, shows what
reverse mode adds (diffrax's recursive checkpointing: it grows with the step count).

    python benchmarks/bench_memory.py                 # N1 = 8, N2 = 32, Tsit5 x 16 steps (Euler for SDEs)
"""

from __future__ import annotations

import argparse
import time

import diffrax as dfx
import jax
import jax.numpy as jnp

import dgjax as dg


def configs(model):
    sc, P = model.score, model.process
    noise = dg.noise_window_log_snr(P, 0.3, -3.0, 9.0)
    k = jax.random.key(0)

    def smp(sampler=None, track=False, steps=16, **kw):
        return lambda x: dg.sample(sc, P, x, sampler=sampler, key=k, track_logp=track, steps=steps, **kw)

    def grad_pf(x):
        return jax.grad(lambda z: jnp.sum(dg.sample(sc, P, z, key=k, track_logp=True, steps=16).logp))(x)

    return {
        "PF-ODE": smp(),
        "PF-ODE, log p tracked": smp(track=True),
        "DG-ODE (q)": smp(dg.DensityGuidance(0.4)),
        "DG-ODE (q), log p tracked": smp(dg.DensityGuidance(0.4), True),
        "HighDensity, log p tracked": smp(dg.HighDensity(0.5), True),
        "ReverseSDE, log p tracked": smp(dg.ReverseSDE(), True, steps=64),
        "DG-SDE (published), log p tracked": smp(dg.StochasticDensityGuidance(0.5, noise), True, steps=64),
        "DG-SDE (exact), log p tracked": smp(dg.StochasticDensityGuidance(0.5, noise, exact=True), True, steps=64),
        "log_likelihood": lambda x: dg.log_likelihood(sc, P, x, key=k, steps=16),
        "score_alignment (score form)": lambda x: dg.score_alignment(sc, P, x, 0.3, steps=16),
        "score_alignment (score-free)": lambda x: dg.score_alignment(sc, P, x, 0.3, key=k, score_free=True,
                                                                     steps=16, solver=dfx.Euler()),
        "gradient of PF-ODE log p wrt x_T (control)": grad_pf,
    }


def temp_bytes(fn, x) -> int:
    return jax.jit(fn).lower(x).compile().memory_analysis().temp_size_in_bytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n1", type=int, default=8)
    ap.add_argument("--n2", type=int, default=32)
    ap.add_argument("--only", nargs="*", help="substrings of the sampler names to run")
    args = ap.parse_args(argv)
    model = dg.load_model("digits")
    x1, x2 = model.prior_sample(jax.random.key(1), args.n1), model.prior_sample(jax.random.key(1), args.n2)
    print(f"digits UNet (D = {model.dim}), {jax.devices()[0].platform}; temp = XLA scratch of the compiled program")
    print(f"{'sampler':<44} {'temp N=' + str(args.n1):>11} {'temp N=' + str(args.n2):>11} {'per sample':>11} "
          f"{'fixed':>9}")
    t0 = time.perf_counter()
    for name, fn in configs(model).items():
        if args.only and not any(s in name for s in args.only):
            continue
        a, b = temp_bytes(fn, x1), temp_bytes(fn, x2)
        slope = (b - a) / (args.n2 - args.n1)
        print(f"{name:<44} {a / 2**20:>9.2f}MB {b / 2**20:>9.2f}MB {slope / 2**10:>9.0f}KB "
              f"{(a - args.n1 * slope) / 2**20:>7.2f}MB", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
