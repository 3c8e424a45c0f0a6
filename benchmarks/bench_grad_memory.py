"""Peak memory of a gradient through log p against the number of steps, for both of diffrax's adjoints (issue 25).

``jax.grad`` of the mean ``dg.log_likelihood`` (PF-ODE, Tsit5 in constant steps, one Hutchinson probe) with
respect to the score's parameters (the Gaussian-mixture oracle's means, or the digits UNet's weights) is compiled
-- not run -- for each step count, and XLA's ``compiled.memory_analysis()`` gives its scratch (``temp``) bytes:
deterministic, no timing noise. ``diffrax.RecursiveCheckpointAdjoint`` (the default) stores checkpoints of the
forward solve, so its memory grows with the number of steps; ``diffrax.BacksolveAdjoint`` solves the adjoint
equations backwards in time and keeps only the current state, so its memory stays flat. (BacksolveAdjoint needs
the score's parameters passed to the solve rather than closed over: dgjax passes them in diffrax's ``args``.)

    python benchmarks/bench_grad_memory.py            # oracle D = 3072 and the digits UNet, 8..256 steps
    python benchmarks/bench_grad_memory.py --quick    # oracle D = 192, 8..64 steps (seconds)
"""

from __future__ import annotations

import argparse
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

import dgjax as dg

try:
    from benchmarks._common import save_json
except ImportError:  # run as a script from benchmarks/
    from _common import save_json

ADJOINTS = {"RecursiveCheckpointAdjoint": dfx.RecursiveCheckpointAdjoint, "BacksolveAdjoint": dfx.BacksolveAdjoint}


def grad_temp_bytes(model, loss_of, x, steps: int, adjoint) -> int:
    """XLA's scratch bytes of the compiled ``jax.grad`` of ``loss_of(model, x, steps, adjoint)`` w.r.t. the
    model's inexact arrays (compiled, not run)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, x):
        return loss_of(eqx.combine(p, static), x, steps, adjoint)

    compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def _mixture_loss(mix, process):
    def loss(m, x, steps, adjoint):
        out = dg.log_likelihood(m.score(process), process, x, key=jax.random.key(0), solver=dfx.Tsit5(),
                                steps=steps, adjoint=adjoint)
        return jnp.mean(out.logp)

    return loss


def _model_loss(m, x, steps, adjoint):
    return jnp.mean(m.log_likelihood(x, key=jax.random.key(0), solver=dfx.Tsit5(), steps=steps,
                                     adjoint=adjoint).logp)


def grad_memory_rows(step_counts=(8, 16, 32, 64, 128, 256), *, dim: int = 3072, n: int = 8,
                     digits: bool = True) -> list[dict]:
    """One row per (model, adjoint, steps): temp bytes of the gradient's compiled program."""
    process = dg.VP()
    mix = dg.random_mixture(jax.random.key(0), 5, (dim,), mean_scale=0.5, var_range=(1e-3, 0.1))
    cases = [(f"oracle D={dim}", mix, _mixture_loss(mix, process), mix.sample(jax.random.key(1), n))]
    if digits:
        model = dg.load_model("digits")
        cases.append((f"digits UNet D={model.dim}", model, _model_loss,
                      jnp.asarray(model.dataset.split("test", n))))
    rows = []
    for label, tree, loss_of, x in cases:
        for name, adjoint in ADJOINTS.items():
            for steps in step_counts:
                t0 = time.perf_counter()
                temp = grad_temp_bytes(tree, loss_of, x, steps, adjoint())
                rows.append(dict(model=label, adjoint=name, steps=steps, n=n, temp_bytes=temp,
                                 compile_s=round(time.perf_counter() - t0, 2)))
                print(f"{label:<20} {name:<28} steps {steps:>4}: temp {temp / 2**20:9.3f} MiB", flush=True)
    return rows


def print_rows(rows) -> None:
    steps = sorted({r["steps"] for r in rows})
    print("\ngradient of mean log p (Tsit5, constant steps): XLA temp MiB against the number of steps")
    print(f"{'model':<20} {'adjoint':<28} " + " ".join(f"{s:>8d}" for s in steps))
    for (model, adj) in dict.fromkeys((r["model"], r["adjoint"]) for r in rows):
        by = {r["steps"]: r["temp_bytes"] for r in rows if r["model"] == model and r["adjoint"] == adj}
        print(f"{model:<20} {adj:<28} " + " ".join(f"{by[s] / 2**20:>8.2f}" for s in steps))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        rows = grad_memory_rows((8, 16, 32, 64), dim=192, n=4, digits=False)
    else:
        rows = grad_memory_rows()
    print_rows(rows)
    save_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
