"""Shared plumbing of the experiment scripts: arguments, the results folder, tables, grids, figures and
the few compiled solves every script reuses. I/O only: every formula lives in dgjax (docs/math.md).

Conventions shared by all scripts
- Each script has ``main(argv=None) -> dict`` (the summary it also writes to ``OUT/summary.json``) and runs
  as ``python scripts/NAME.py [--quick] [--out DIR] [--model digits|patches] [--seed S] ...``.
- Default results folder: ``results/NAME`` at the repository root (``results/NAME-quick`` with --quick);
  ``results/`` is git-ignored.
- log p is in nats, the model density of x in [-1, 1]^D at t_min. "Re-encoded" log p is
  ``dg.log_likelihood`` (PF-ODE encoding, fixed Tsit5 steps, Hutchinson probes held fixed along the path);
  it is the independent measurement. "Tracked" log p is the one integrated while sampling (docs/math.md 4).
- Compiled solves are cached per (model, settings) in this module, so scripts run in one process (the
  tests) compile each program once. Several samplers share one program: ``guided(...)`` runs
  ``dg.DensityGuidance(q, start_at_median=False)`` on latents prepared outside; at q = 0.5, eta = 1
  exactly (Phi^{-1}(0.5) = 0), so it *is* the PF-ODE, with the PF-ODE's tracked rate -div u; prior
  guidance is the PF-ODE from latents rescaled by ``dg.prior_guidance``.
- ``--quick`` shrinks batches and steps so a script finishes in seconds (plus compilation): its numbers
  only check the plumbing and the sign of the headline, they are not results.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import time
from functools import cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------------
# arguments and settings
# ------------------------------------------------------------------------------------------------------
def make_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The arguments every script takes; scripts add their own."""
    p = argparse.ArgumentParser(prog=f"python scripts/{name}.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny batches and steps (for the tests): checks the plumbing, the numbers mean little")
    p.add_argument("--out", default=None,
                   help=f"results folder (default results/{name}, or results/{name}-quick with --quick)")
    p.add_argument("--model", default="digits",
                   help="a shipped model (digits, digits-flow, patches), a galaxy model (galaxies-hsc32, "
                   "galaxies-hsc64, galaxies-ztf32, galaxies-ztf64; needs dgjax[galaxies]) or a model path")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of latents, probes and Brownian paths")
    p.add_argument("--num", type=int, default=None, help="samples (latents) per configuration")
    p.add_argument("--steps", type=int, default=None, help="constant Tsit5 steps of each ODE sampling solve")
    p.add_argument("--encode-steps", type=int, default=None,
                   help="constant Tsit5 steps of the re-encoding solve (dg.log_likelihood)")
    p.add_argument("--encode-probes", type=int, default=None, help="Hutchinson probes of the re-encoding")
    p.add_argument("--batch", type=int, default=None, help="samples per compiled solve (memory / reuse)")
    return p


# Settings common to the scripts; each script adds its own keys. "large" applies to models with
# D >= 256 (patches: 16x16x3), whose score costs about 3x the digits model's per sample.
BASE_FULL = dict(num=64, steps=16, encode_steps=8, encode_probes=4, batch=64)
BASE_QUICK = dict(num=8, steps=6, encode_steps=3, encode_probes=1, batch=8)


def settings(args, full: dict, quick: dict, large: dict | None = None, dim: int | None = None) -> dict:
    """Merge defaults (``quick`` with --quick, else ``full``, with ``large`` on top for big models) with
    the command-line values that were given (not None)."""
    cfg = dict(BASE_QUICK if args.quick else BASE_FULL)
    cfg.update(quick if args.quick else full)
    if not args.quick and large and dim is not None and dim >= 256:
        cfg.update(large)
    for k in list(cfg) + ["num", "steps", "encode_steps", "encode_probes", "batch"]:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    cfg["batch"] = max(1, min(cfg["batch"], cfg["num"]))
    return cfg


# ------------------------------------------------------------------------------------------------------
# the results folder
# ------------------------------------------------------------------------------------------------------
def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        o = float(o)
        return o if math.isfinite(o) else None
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    return o


class Run:
    """One script run: its folder, its files and its summary (settings, headline, wall time)."""

    def __init__(self, name: str, args, argv, cfg: dict):
        self.name = name
        self.out = Path(args.out) if args.out else REPO / "results" / (name + ("-quick" if args.quick else ""))
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        cmd = " ".join(["python", f"scripts/{name}.py", *argv])
        self.summary = {"script": name, "command": cmd, "model": args.model, "seed": args.seed,
                        "quick": bool(args.quick), "settings": dict(cfg), "headline": {}, "headline_text": [],
                        "files": []}
        logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)  # infeasible guidance is reported
        print(f"[{name}] {cmd}  ->  {self.out}", flush=True)

    def path(self, fname: str) -> Path:
        if fname not in self.summary["files"]:
            self.summary["files"].append(fname)
        return self.out / fname

    def log(self, msg: str) -> None:
        print(f"[{self.name} {time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def csv(self, fname: str, rows: list[dict]) -> None:
        """A CSV table from a list of dicts (the union of their keys, in first-seen order)."""
        keys: list = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with open(self.path(fname), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: _fmt(r.get(k)) for k in keys})

    def json(self, fname: str, obj) -> None:
        with open(self.path(fname), "w") as f:
            json.dump(_jsonable(obj), f, indent=1)

    def grid(self, fname: str, rows, model, labels=None, title: str | None = None) -> None:
        """A PNG grid of model-space images, rows x columns: ``rows`` (R, C, *shape), drawn by
        ``dg.data.save_image_grid`` (the data set's transform to 8-bit pixels); with ``labels`` (one per
        row) and/or a title, redrawn with matplotlib so the rows are named."""
        import tempfile

        import dgjax as dg

        rows = np.asarray(rows)
        scale = 6 if model.shape[0] <= 8 else 3
        if labels is None and title is None:
            dg.data.save_image_grid(self.path(fname), rows, model.dataset.transform, scale=scale)
            return
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "grid.png")
            dg.data.save_image_grid(raw, rows, model.dataset.transform, scale=1, pad=1)
            img = np.asarray(Image.open(raw).convert("RGB"))
        plt = pyplot()
        h, w = img.shape[:2]
        fig = plt.figure(figsize=(max(3.0, w * 0.055) + 1.2, h * 0.055 + (0.35 if title else 0.1)))
        ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
        ax.imshow(img, interpolation="nearest")
        cell = model.shape[0] + 1
        if labels is not None:
            ax.set_yticks([1 + cell * i + model.shape[0] / 2 for i in range(len(labels))], labels, fontsize=8)
        else:
            ax.set_yticks([])
        ax.set_xticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if title:
            ax.set_title(title, fontsize=9)
        fig.savefig(self.path(fname), dpi=100, bbox_inches="tight", pad_inches=0.05)
        plt.close(fig)

    def figure(self, fname: str, fig) -> None:
        fig.savefig(self.path(fname), dpi=90, bbox_inches="tight")
        pyplot().close(fig)

    def headline(self, text: str, **values) -> None:
        print(f"HEADLINE [{self.name}]: {text}", flush=True)
        self.summary["headline_text"].append(text)
        self.summary["headline"].update(values)

    def finish(self) -> dict:
        self.summary["wall_s"] = round(time.perf_counter() - self.t0, 1)
        self.json("summary.json", self.summary)
        print(f"[{self.name}] done in {self.summary['wall_s']:.0f}s; files in {self.out}: "
              f"{', '.join(self.summary['files'])}", flush=True)
        return _jsonable(self.summary)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.6g}"
    return v


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------------------------
# statistics and image measures
# ------------------------------------------------------------------------------------------------------
def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float:
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def png_sizes(model, x) -> np.ndarray:
    """Bytes of each sample written as a PNG (8-bit pixels through the data set's transform, native
    resolution, zlib level 9 with PIL's optimize): the papers' measure of detail."""
    from PIL import Image

    img = model.dataset.transform.to_uint8(np.asarray(x))
    sizes = []
    for im in img:
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, format="PNG", optimize=True)
        sizes.append(buf.tell())
    return np.asarray(sizes)


def clip_fraction(model, x) -> float:
    """Fraction of pixel values the 8-bit rendering (``png_sizes``, grids) saturates: outside [-r, r] for
    models with a data range r (digits, patches), else the display's own ``clipped`` mask (galaxies: flux
    below 0 or above white in the asinh stretch); NaN when neither is known."""
    x = np.asarray(x)
    r = getattr(model, "data_range", None)
    if r is not None:
        return float(np.mean(np.abs(x) > r))
    clipped = getattr(model.dataset.transform, "clipped", None)
    return float(np.mean(clipped(x))) if clipped is not None else float("nan")


def bits_per_dim(model, logp) -> np.ndarray:
    import dgjax as dg

    return np.asarray(dg.bits_per_dim(np.asarray(logp), model.shape, model.dataset.offset_bits))


# ------------------------------------------------------------------------------------------------------
# models and compiled solves (cached per process)
# ------------------------------------------------------------------------------------------------------
@cache
def load_model(name: str):
    import dgjax as dg

    return dg.load_model(name)


def log_snr_times(process, fractions) -> list[float]:
    """Times at fixed fractions u of the process's log-SNR range, lambda_t = lambda_max + u (lambda_min -
    lambda_max), to 3 significant digits (float64): the same points of the noise schedule on every process
    (t = u on VP, whose lambda is linear in t on [0, 1])."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        lam_hi, lam_lo = (float(process.log_snr(jnp.asarray(t, jnp.float64))) for t in (process.t_min, process.t_max))
        ts = np.asarray(process.time_of_log_snr(jnp.asarray([lam_hi + u * (lam_lo - lam_hi) for u in fractions])))
    return [float(f"{t:.3g}") for t in ts]


def latents(model, seed: int, n: int):
    import jax

    return model.prior_sample(jax.random.key(seed), n)


def batched(fn, x, key, batch: int, *extra):
    """Apply ``fn(x_chunk, *extra, key_i) -> tuple of (n, ...) arrays`` over chunks of ``batch`` rows (the
    last chunk padded by repeating rows, so every call has one shape and one compiled program); returns
    numpy arrays. Chunk i gets ``fold_in(key, i)``."""
    from dgjax.parallel import map_chunks

    return map_chunks(fn, x, batch, key, *extra, pad=True, fold="index")


@cache
def _guided_program(model_name: str, steps: int, probes: int):
    import jax

    import dgjax as dg

    model = load_model(model_name)

    @jax.jit
    def run(x_T, q, key):
        out = dg.sample(model.score, model.process, x_T, sampler=dg.DensityGuidance(q, start_at_median=False),
                        key=key, track_logp=True, divergence=dg.Hutchinson(probes), **fixed(steps))
        return out.x, out.logp

    return run


def guided(model_name: str, x_T, q: float, key, *, steps: int, probes: int, batch: int):
    """DG-ODE with quantile q from the given latents *as they are* (no median rescaling; do it with
    ``median_latents`` first), log p tracked. q = 0.5 is exactly the PF-ODE. Returns (x, tracked log p)."""
    import jax.numpy as jnp

    run = _guided_program(model_name, steps, probes)
    return batched(run, x_T, key, batch, jnp.float32(q))


def pf_ode(model_name: str, x_T, key, *, steps: int, probes: int, batch: int):
    """PF-ODE samples with tracked log p (docs/math.md 4(a)): the shared program at q = 0.5."""
    return guided(model_name, x_T, 0.5, key, steps=steps, probes=probes, batch=batch)


def median_latents(model, x_T):
    """Latents rescaled to the median chi radius, as ``dg.DensityGuidance`` starts (its own ``prepare``)."""
    import dgjax as dg

    return dg.DensityGuidance(0.5).prepare(model.process, x_T)


@cache
def _encode_program(model_name: str, steps: int, probes: int):
    import jax

    import dgjax as dg

    model = load_model(model_name)

    @jax.jit
    def run(x, key):
        return dg.log_likelihood(model.score, model.process, x, key=key, divergence=dg.Hutchinson(probes),
                                 **fixed(steps)).logp

    return run


def encode(model_name: str, x, key, *, steps: int, probes: int, batch: int) -> np.ndarray:
    """Re-encoded log p of samples x: ``dg.log_likelihood`` (PF-ODE encoding; the independent measure)."""
    return batched(_encode_program(model_name, steps, probes), x, key, batch)


def fixed(steps: int) -> dict:
    """Constant-step solve arguments."""
    return dict(steps=steps)


def rng_key(seed: int, *stream: int):
    import jax

    key = jax.random.key(seed)
    for s in stream:
        key = jax.random.fold_in(key, s)
    return key
