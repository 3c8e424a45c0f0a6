"""Why fine-tuning ``digits-flow`` on its log-likelihood gains little held out: the gradient's agreement and the
landscape along it, at the shipped weights (issue 25; docs/likelihood.md, "Training on the log-likelihood").

1. Gradients of the mean training bits/dim (the fine-tuning objective: adaptive Tsit5 at rtol 1e-2, one probe)
   over disjoint batches of ``--n`` training digits and one batch of test digits: the cosine between training
   batches and between training and test, per group of weights (convolution kernels, biases, normalisation,
   time embedding, attention) and for the conditioning weights that ``finetune_flow.py --tune conditioning``
   trains.
2. Held-out and unseen-training bits/dim (other examples than the gradients', fixed probes and dequantisation,
   adaptive rtol 1e-4, two probes) after one step from the shipped weights along the mean training gradient:
   raw (steps of a given norm) and preconditioned as Adam does (g / sqrt(v), v the mean square of the batch
   gradients), for all weights and for the conditioning ones. Paired changes with their standard errors.

    python benchmarks/bench_finetune_directions.py           # about 30 minutes on 2 cores
    python benchmarks/bench_finetune_directions.py --quick   # tiny sizes: the plumbing only
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import dgjax as dg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from finetune_flow import is_conditioning  # noqa: E402


def group(path, leaf) -> str:
    names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    if is_conditioning(path, leaf):
        kind = "norm" if any(n.startswith("GroupNorm") for n in names) else (
            "time embedding" if any(n.startswith("Dense") for n in names) else "bias")
        return "conditioning: " + kind
    return "attention kernels" if any(n.startswith("MultiHead") for n in names) else "convolution kernels"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=64, help="examples per gradient batch")
    ap.add_argument("--batches", type=int, default=3, help="disjoint training batches")
    ap.add_argument("--eval-n", type=int, default=96, help="examples of each line-search evaluation")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.batches, args.eval_n = 2, 2, 4
    model = dg.load_model("digits-flow")
    ds = model.dataset
    params, static = eqx.partition(model, eqx.is_inexact_array)
    d_ln2 = model.dim * math.log(2.0)
    rtol = 1e-1 if args.quick else 1e-2

    def loss(p, x, k):
        out = eqx.combine(p, static).log_likelihood(x, key=k, rtol=rtol, atol=rtol, max_steps=256)
        return -jnp.mean(out.logp) / d_ln2

    grad = jax.jit(jax.grad(loss))
    train, test = ds.split("train", None, seed=0), ds.split("test", None, seed=0)
    k = jax.random.key(1)
    t0 = time.perf_counter()
    g_test = grad(params, jnp.asarray(test[:args.n]), k)
    g_train = [grad(params, jnp.asarray(train[i * args.n:(i + 1) * args.n]), k) for i in range(args.batches)]
    print(f"{args.batches + 1} gradients of {args.n} examples: {time.perf_counter() - t0:.0f} s", flush=True)

    paths = jax.tree_util.tree_leaves_with_path(params)
    groups = collections.defaultdict(list)
    for i, (path, leaf) in enumerate(paths):
        groups[group(path, leaf)].append(i)
        groups["conditioning (all)" if is_conditioning(path, leaf) else "kernels (all)"].append(i)
        groups["all weights"].append(i)

    def flat(g, idx):
        leaves = jax.tree_util.tree_leaves(g)
        return np.concatenate([np.asarray(leaves[i]).ravel() for i in idx])

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    rows = []
    print(f"{'weights':28s} {'count':>8s} {'cos train-train':>15s} {'cos train-test':>14s}")
    for name, idx in sorted(groups.items()):
        te, trs = flat(g_test, idx), [flat(g, idx) for g in g_train]
        tt = np.mean([cos(trs[i], trs[j]) for i in range(len(trs)) for j in range(i + 1, len(trs))])
        row = dict(weights=name, count=int(te.size), cos_train_train=float(tt), cos_train_test=cos(np.mean(trs, 0), te))
        rows.append(row)
        print(f"{name:28s} {row['count']:8d} {tt:15.3f} {row['cos_train_test']:14.3f}", flush=True)

    mean = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0), *g_train)
    sq = jax.tree.map(lambda *a: jnp.mean(jnp.square(jnp.stack(a)), 0), *g_train)
    x_test, x_unseen = (jnp.asarray(a) for a in (test[args.n:args.n + args.eval_n],
                                                   train[args.batches * args.n:args.batches * args.n + args.eval_n]))
    ke = jax.random.key(7)
    ev = jax.jit(lambda p, x: -eqx.combine(p, static).log_likelihood(
        x, key=ke, rtol=1e-4, atol=1e-4, divergence=dg.Hutchinson(2)).logp / d_ln2)
    base = [np.asarray(ev(params, x)) for x in (x_test, x_unseen)]
    cond = jax.tree_util.tree_map_with_path(lambda p, a: float(is_conditioning(p, a)), params)
    norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(mean))))
    directions = {
        "raw, all weights (step norm)": (jax.tree.map(lambda a: a / norm, mean), [0.01, 0.03, 0.1]),
        "Adam, all weights (lr)": (jax.tree.map(lambda a, v: a / (jnp.sqrt(v) + 1e-8), mean, sq), [1e-5, 3e-5, 1e-4]),
        "Adam, conditioning (lr)": (jax.tree.map(lambda a, v, c: c * a / (jnp.sqrt(v) + 1e-8), mean, sq, cond),
                                    [3e-5, 1e-4, 3e-4]),
    }
    steps = []
    for name, (d, sizes) in directions.items():
        for s in sizes:
            moved = jax.tree.map(lambda p, u, s=s: p - s * u, params, d)
            diff = [np.asarray(ev(moved, x)) - b for x, b in zip((x_test, x_unseen), base, strict=True)]
            (dt, st), (du, su) = ((float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))) for v in diff)
            steps.append(dict(direction=name, size=s, heldout_change=dt, heldout_stderr=st, unseen_train_change=du,
                              unseen_train_stderr=su))
            print(f"{name:30s} {s:7g}: held-out {dt:+.4f} +- {st:.4f}; unseen training {du:+.4f} +- {su:.4f}",
                  flush=True)
    return dict(agreement=rows, steps=steps)


if __name__ == "__main__":
    main()
