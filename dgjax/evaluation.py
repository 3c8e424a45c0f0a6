"""Log-likelihood of a whole data set under a named dequantization protocol (docs/math.md section 4).

Discrete data y (integer levels, ``dg.Quantization``: bins of width w on [low, high)) have a probability
``P(y) = int_bin p(x) dx``; a continuous model gives a density p. Three protocols turn one into the other:

* ``UniformDequantization(repeats=R)``: x = low + (y + u) w, u ~ U[0, 1)^D; by Jensen
  ``log P(y) >= E_u log p(x) + D log w``, estimated by the mean over R draws (score_sde's protocol: R = 5,
  adaptive RK45 at 1e-5, one Rademacher probe per draw).
* ``ImportanceDequantization(draws=K, proposal=...)``: u_k ~ q (uniform, or a truncated normal centred in the
  bin) and ``L_K = log (1/K) sum_k p(x_k) w^D / q(u_k)``, the importance-weighted bound (i-DODE): E L_K rises
  with K to log P(y) (Burda et al.'s IWAE argument), L_1 of a uniform proposal is the uniform bound.
* ``None``: continuous data, log p(x) itself (bits/dim without an offset); with ``to_data_space`` also the
  log-density of the data in another space (a galaxy model's flux, ``GalaxyModel.data_log_prob``).

``evaluate_likelihood`` encodes with the PF-ODE (``dg.log_likelihood``, batches spread over all devices with
``dg.log_likelihood_sharded``); ``evaluate_log_density`` runs the same protocol on an exact log-density (a
flow's, or the Gaussian-mixture oracle's), so the dequantization part can be studied alone. Both write
every finished batch to ``checkpoint_dir`` (atomically) and resume from it; the result of a resumed run
equals an uninterrupted one exactly (every random draw is a function of the key and the batch index).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._io import atomic_write
from .divergence import DivergenceEstimator, Exact, Hutchinson
from .errors import InvalidArgument
from .quantization import Quantization
from .solve import SolveOptions

__all__ = ["Dequantization", "UniformDequantization", "ImportanceDequantization", "StandardErrors",
           "DatasetLikelihood", "evaluate_likelihood", "evaluate_log_density", "likelihood_difference"]


# ------------------------------------------------------------------------------------------------------
# dequantization protocols
# ------------------------------------------------------------------------------------------------------
class Dequantization(eqx.Module):
    """A dequantization protocol: ``draws`` offsets u in [0, 1)^D per example and how their log-densities
    combine into an estimate of log P(y)."""

    @property
    @abc.abstractmethod
    def copies(self) -> int:
        """M, the dequantized copies (PF-ODE encodings) per example."""

    @abc.abstractmethod
    def offsets(self, key, y: Array) -> tuple[Array, Array]:
        """(u (M, n, *shape) in [0, 1), log q(u) (M, n)) for levels y (n, *shape)."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The protocol's name in reports: "uniform" or "importance" (a class attribute of each protocol)."""


def _check_count(value, name: str) -> None:
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        raise InvalidArgument(f"{name}: must be an integer >= 1; got {value!r}")


class UniformDequantization(Dequantization):
    """Uniform dequantization, ``repeats`` independent draws u ~ U[0, 1)^D per example, their log p averaged:
    the variational bound E_u log p(x) + D log w <= log P(y) (score_sde: repeats = 5)."""

    name: ClassVar[str] = "uniform"
    repeats: int = eqx.field(static=True, default=5)

    def __check_init__(self):
        _check_count(self.repeats, "repeats")

    @property
    def copies(self) -> int:
        return self.repeats

    def offsets(self, key, y):
        u = jax.random.uniform(key, (self.repeats,) + y.shape, dtype=y.dtype)
        return u, jnp.zeros((self.repeats, y.shape[0]), y.dtype)


class ImportanceDequantization(Dequantization):
    """Importance-weighted dequantization: ``draws`` K offsets u_k ~ q per example combined by log-mean-exp,
    ``L_K = logsumexp_k (log p(x_k) - log q(u_k)) - log K + D log w``, a lower bound on log P(y) whose
    expectation rises with K to log P(y).

    proposal: "uniform" (q = 1 on [0, 1)^D: L_1 is the uniform bound) or "truncnormal" (per dimension a
    normal of mean 1/2 and standard deviation ``scale`` bins truncated to [0, 1): more draws near the bin
    centre, for models whose density peaks inside bins).
    """

    name: ClassVar[str] = "importance"
    draws: int = eqx.field(static=True, default=16)
    proposal: str = eqx.field(static=True, default="uniform")
    scale: float = eqx.field(static=True, default=0.3)

    def __check_init__(self):
        _check_count(self.draws, "draws")
        if self.proposal not in ("uniform", "truncnormal"):
            raise InvalidArgument(f"proposal: must be 'uniform' or 'truncnormal'; got {self.proposal!r}")
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale < float("inf")):
            raise InvalidArgument(f"scale: the truncated normal's standard deviation in bins must be a positive "
                                  f"number; got {self.scale!r}")

    @property
    def copies(self) -> int:
        return self.draws

    def offsets(self, key, y):
        shape = (self.draws,) + y.shape
        if self.proposal == "uniform":
            return jax.random.uniform(key, shape, dtype=y.dtype), jnp.zeros(shape[:2], y.dtype)
        bound = 0.5 / self.scale
        z = jax.random.truncated_normal(key, -bound, bound, shape, dtype=y.dtype)
        # log q(u) = sum_d [log phi(z_d) - log scale - log(Phi(b) - Phi(-b))], u = 1/2 + scale z
        log_mass = math.log(math.erf(bound / math.sqrt(2.0)))
        per_dim = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - math.log(self.scale) - log_mass
        return 0.5 + self.scale * z, jnp.sum(jnp.reshape(per_dim, shape[:2] + (-1,)), axis=-1)


# ------------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StandardErrors:
    """Standard error of a mean log-likelihood and its parts (same unit): total^2 ~ data^2 + dequantization^2
    + probe^2 (``DatasetLikelihood`` gives the estimators). NaN where the design cannot separate a part."""

    total: float
    data: float
    dequantization: float
    probe: float

    def scaled(self, factor: float) -> StandardErrors:
        return StandardErrors(*(abs(factor) * v for v in dataclasses.astuple(self)))


@dataclasses.dataclass(frozen=True)
class DatasetLikelihood:
    """What ``evaluate_likelihood`` returns.

    Attributes:
      protocol: "uniform", "importance" or "none".
      nats: mean over examples of the per-example estimate: of log P(y) (a lower bound; discrete data) or of
        log p(x) (continuous data), in nats.
      stderr: its standard errors in nats, split by source (below).
      per_example: (N,) the per-example estimates L_n (nats).
      log_density: (N, M) model log p(x) of each dequantized copy (mean over the solve's probes).
      dim: D; num_examples: N; draws: M per example; offset_bits: -log2 w (0 for continuous data).
      nfe_per_example: score evaluations per example (M encodings, each ``Likelihood.nfe``).
      wall_time: seconds spent in the batches (summed over resumed runs; compile time included).
      data_space: for continuous data with ``to_data_space``, the same report in the data space.

    Standard errors. Examples n = 1..N, copies m = 1..M, b_nm = log p of copy m (mean over its P probes),
    s2_nm = the squared standard error of that mean across probes (0 for ``dg.Exact``), S2_L = the sample
    variance of L_n over n. total^2 = S2_L / N (unbiased for the mean's variance over data, dequantization
    and probes). Uniform (a nested ANOVA, L_n = mean_m b_nm + D log w): W = mean_n var_m(b_nm),
    probe^2 = mean(s2) / (N M), dequantization^2 = (W - mean(s2))_+ / (N M), data^2 = (S2_L - W / M)_+ / N.
    Importance (first-order delta method; a_nm = b_nm - log q_nm, omega_nm = softmax_m a_nm):
    V_n = (M sum_m omega_nm^2 - 1) / (M - 1), the conditional variance of L_n given y_n,
    probe^2 = mean_n(sum_m omega_nm^2 s2_nm) / N, dequantization^2 = mean_n(V_n - probe_n)_+ / N,
    data^2 = (S2_L - mean_n V_n)_+ / N. None: probe^2 = mean(s2) / N, data^2 = (S2_L - mean s2)_+ / N.
    With one stochastic probe per solve the probe part cannot be separated (NaN; it is then inside the
    dequantization part, or the data part for "none"); with M = 1 neither can the dequantization part.
    """

    protocol: str
    nats: float
    stderr: StandardErrors
    per_example: np.ndarray
    log_density: np.ndarray
    dim: int
    num_examples: int
    draws: int
    offset_bits: float
    nfe_per_example: float
    wall_time: float
    data_space: DatasetLikelihood | None = None

    @property
    def bits_per_dim(self) -> float:
        """-nats / (D ln 2): bits/dim of the data (the offset -log2 w is inside ``nats`` for discrete data)."""
        return -self.nats / (self.dim * math.log(2.0))

    @property
    def bits_stderr(self) -> StandardErrors:
        return self.stderr.scaled(1.0 / (self.dim * math.log(2.0)))

    def __str__(self) -> str:
        se = self.bits_stderr
        text = (f"{self.bits_per_dim:.4f} +- {se.total:.4f} bits/dim ({self.protocol}, M = {self.draws}; standard "
                f"error parts: data {se.data:.4f}, dequantization {se.dequantization:.4f}, probe {se.probe:.4f}); "
                f"{self.nats:.2f} +- {self.stderr.total:.2f} nats; {self.num_examples} examples, "
                f"{self.nfe_per_example:.0f} NFE/example, {self.wall_time:.1f} s")
        if self.data_space is not None:
            text += f"; data space: {self.data_space.nats:.2f} +- {self.data_space.stderr.total:.2f} nats"
        return text


def _nan_to(v: float) -> float:
    return float(v) if np.isfinite(v) else float("nan")


def summarize(protocol: str, log_density: np.ndarray, probe_var: np.ndarray | None, log_q: np.ndarray,
              log_volume: float) -> tuple[np.ndarray, float, StandardErrors]:
    """(per-example L (N,), mean, standard errors) from log p (N, M), probe variances s2 (N, M) (None: not
    separable) and log q (N, M): the estimators of ``DatasetLikelihood``'s docstring."""
    b = np.asarray(log_density, np.float64)
    n, m = b.shape
    s2 = np.zeros_like(b) if probe_var is None else np.asarray(probe_var, np.float64)
    if protocol == "importance":
        a = b - np.asarray(log_q, np.float64)
        top = a.max(axis=1, keepdims=True)
        w = np.exp(a - top)
        L = top[:, 0] + np.log(w.mean(axis=1)) + log_volume
        omega = w / w.sum(axis=1, keepdims=True)
        v = (m * np.sum(omega**2, axis=1) - 1.0) / (m - 1) if m > 1 else np.full(n, np.nan)
        probe_n = np.sum(omega**2 * s2, axis=1)
        within, probe, deq = np.mean(v), np.mean(probe_n), np.mean(np.maximum(v - probe_n, 0.0))
        data_var = lambda s2l: (s2l - within)  # noqa: E731
        parts = (deq / n, probe / n)
    else:
        L = b.mean(axis=1) + log_volume
        w_within = np.mean(np.var(b, axis=1, ddof=1)) if m > 1 else np.nan
        mean_s2 = np.mean(s2)
        if protocol == "none":
            w_within = mean_s2 if m == 1 else w_within
        data_var = lambda s2l: (s2l - w_within / m)  # noqa: E731
        parts = (0.0 if protocol == "none" else max(w_within - mean_s2, 0.0) / (n * m), mean_s2 / (n * m))
    s2l = np.var(L, ddof=1) if n > 1 else np.nan
    total = math.sqrt(s2l / n) if n > 1 else float("nan")
    data = math.sqrt(max(data_var(s2l), 0.0) / n) if n > 1 and np.isfinite(data_var(s2l)) else float("nan")
    deq, probe = (math.sqrt(p) if np.isfinite(p) else float("nan") for p in parts)
    if probe_var is None:
        probe = float("nan")
    return L, float(np.mean(L)), StandardErrors(_nan_to(total), data, deq, probe)


def likelihood_difference(a: DatasetLikelihood, b: DatasetLikelihood) -> DatasetLikelihood:
    """``a - b`` example by example: the change in a data set's log-likelihood between two models (a fine-tuned
    one and its start, two checkpoints), each evaluated on the same data with the same key and protocol, so
    that both encoded the same dequantized copies with the same probes and most of the draws' noise cancels.

    Returns a ``DatasetLikelihood`` whose ``nats``, ``per_example`` (N,) and ``log_density`` (N, M) are a's
    minus b's, so ``bits_per_dim`` is a's bits/dim minus b's (docs/math.md section 4). Its standard errors are
    ``DatasetLikelihood``'s estimators applied to the per-copy differences d_nm = b^a_nm - b^b_nm (uniform,
    none), whose mean over copies is the per-example change: ``data`` is how much the change varies
    between examples (what it says about other data from the same source), ``dequantization`` the noise the
    draws and probes leave in the paired change (the probe part is not separated: NaN). Importance: the
    log-mean-exp does not split copy by copy, so only ``total`` is given. ``nfe_per_example`` and
    ``wall_time`` are the two evaluations' sums; ``data_space`` the difference of both's, where both have one.

    Raises ``dg.InvalidArgument`` (naming ``b``) when the two differ in protocol, examples, copies, dimension
    or offset: they were not evaluated alike.
    """
    for name in ("protocol", "num_examples", "draws", "dim", "offset_bits"):
        if getattr(a, name) != getattr(b, name):
            raise InvalidArgument(f"b: evaluated unlike a ({name} {getattr(b, name)!r}, a's {getattr(a, name)!r}); "
                                  f"evaluate both on the same data with the same protocol and key")
    diff = np.asarray(a.log_density, np.float64) - np.asarray(b.log_density, np.float64)
    per_example = np.asarray(a.per_example, np.float64) - np.asarray(b.per_example, np.float64)
    n = per_example.shape[0]
    if a.protocol == "importance":
        total = math.sqrt(np.var(per_example, ddof=1) / n) if n > 1 else float("nan")
        se = StandardErrors(total, float("nan"), float("nan"), float("nan"))
    else:
        _, _, se = summarize(a.protocol, diff, None, np.zeros_like(diff), 0.0)
    space = (likelihood_difference(a.data_space, b.data_space)
             if a.data_space is not None and b.data_space is not None else None)
    return DatasetLikelihood(a.protocol, float(np.mean(per_example)), se, per_example, diff, dim=a.dim,
                             num_examples=n, draws=a.draws, offset_bits=0.0,
                             nfe_per_example=a.nfe_per_example + b.nfe_per_example,
                             wall_time=a.wall_time + b.wall_time, data_space=space)


# ------------------------------------------------------------------------------------------------------
# the engine: batches, keys, checkpoints
# ------------------------------------------------------------------------------------------------------
def _chunks(data, batch_size: int) -> Iterable[np.ndarray]:
    """Batches of ``batch_size`` rows (the last may be shorter) from an array or an iterable of arrays."""
    if hasattr(data, "shape") and hasattr(data, "__getitem__"):
        if np.ndim(data) < 2:
            raise InvalidArgument(f"data: must have shape (N, *shape) with a batch axis; got shape {np.shape(data)}")
        for lo in range(0, data.shape[0], batch_size):
            yield np.asarray(data[lo:lo + batch_size])
        return
    buffer: list = []
    count = 0
    for part in data:
        part = np.asarray(part)
        if part.ndim < 2:
            raise InvalidArgument(f"data: every array of the iterable must have shape (n, *shape); got {part.shape}")
        buffer.append(part)
        count += part.shape[0]
        while count >= batch_size:
            cat = np.concatenate(buffer)
            yield cat[:batch_size]
            buffer, count = [cat[batch_size:]], count - batch_size
    if count:
        yield np.concatenate(buffer)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str((a.shape, a.dtype.str)).encode()).hexdigest()


def _check_levels(y: np.ndarray, quantization: Quantization) -> None:
    if not np.all((y == np.floor(y)) & (y >= 0) & (y <= quantization.levels - 1)):
        raise InvalidArgument(f"data: discrete data must be integer levels in [0, {quantization.levels - 1}] "
                              f"(quantization {quantization}); got values in [{y.min()}, {y.max()}]. Pass the "
                              f"data set's integer data (Dataset.data_split), or dequantization=None for "
                              f"continuous data")


class _Checkpoint:
    """Per-batch result files ``batch_XXXXXX.npz`` in ``directory`` beside ``settings.json``."""

    def __init__(self, directory: str | None, settings: dict):
        self.directory = directory
        if directory is None:
            return
        directory = os.fspath(directory)
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "settings.json")
        if os.path.exists(path):
            with open(path) as fh:
                stored = json.load(fh)
            if stored != settings:
                changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
                raise InvalidArgument(f"checkpoint_dir: {directory!r} holds an evaluation with other settings "
                                      f"(differing: {', '.join(changed)}); it cannot be resumed with these. Use "
                                      f"another directory, or delete it to start afresh")
        else:
            text = json.dumps(settings, indent=1, sort_keys=True).encode()
            atomic_write(path, lambda fh: fh.write(text), InvalidArgument)

    def _path(self, index: int) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, f"batch_{index:06d}.npz")

    def load(self, index: int, digest: str) -> dict | None:
        path = self._path(index)
        if path is None or not os.path.exists(path):
            return None
        with np.load(path) as f:
            out = {k: f[k] for k in f.files}
        if str(out.pop("digest")) != digest:
            raise InvalidArgument(f"checkpoint_dir: batch {index} of {self.directory!r} was computed on other data "
                                  f"than the data given now; use another directory for other data")
        return out

    def save(self, index: int, digest: str, arrays: dict) -> None:
        path = self._path(index)
        if path is None:
            return
        buf = io.BytesIO()
        np.savez(buf, digest=np.asarray(digest), **arrays)
        atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def _key_data(key) -> list:
    if key is None:
        raise InvalidArgument("key: the dequantization draws and probes need a PRNG key (key=jax.random.key(0))")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(key)).tolist()
    return np.asarray(key).tolist()


def _run(batch_fn: Callable, data, *, quantization: Quantization | None, dequantization: Dequantization | None,
         batch_size: int, key, settings: dict, checkpoint_dir, progress: bool, on_batch: Callable | None,
         to_data_space: Callable | None, probe_rows: int) -> DatasetLikelihood:
    _check_count(batch_size, "batch_size")
    if dequantization is not None and not isinstance(dequantization, Dequantization):
        raise InvalidArgument(f"dequantization: expected dg.UniformDequantization(...), "
                              f"dg.ImportanceDequantization(...) or None; got {dequantization!r}")
    if dequantization is not None and not isinstance(quantization, Quantization):
        raise InvalidArgument(f"quantization: discrete data need their declared quantization (e.g. "
                              f"dg.load_dataset(name).quantization or dg.Quantization(levels=256)); got "
                              f"{quantization!r}. For continuous data pass dequantization=None")
    if dequantization is None and quantization is not None:
        raise InvalidArgument("quantization: continuous data (dequantization=None) have no quantization; drop it")
    if dequantization is not None and to_data_space is not None:
        raise InvalidArgument("to_data_space: applies to continuous data only (dequantization=None)")
    settings = dict(settings, key=_key_data(key), batch_size=int(batch_size), quantization=repr(quantization),
                    dequantization=repr(dequantization), to_data_space=to_data_space is not None)
    ckpt = _Checkpoint(checkpoint_dir, settings)
    total = math.ceil(data.shape[0] / batch_size) if hasattr(data, "shape") else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="likelihood", unit="batch", dynamic_ncols=True)
    draws = 1 if dequantization is None else dequantization.copies
    results, shape = [], None
    for index, chunk in enumerate(_chunks(data, batch_size)):
        shape = chunk.shape[1:] if shape is None else shape
        if chunk.shape[1:] != shape:
            raise InvalidArgument(f"data: batch {index} has example shape {chunk.shape[1:]}, earlier ones {shape}")
        digest = _digest(chunk)
        done = ckpt.load(index, digest)
        if done is None:
            start = time.perf_counter()
            done = _one_batch(batch_fn, chunk, batch_size, jax.random.fold_in(key, index), quantization,
                              dequantization, to_data_space)
            done["seconds"] = np.asarray(time.perf_counter() - start)
            ckpt.save(index, digest, done)
        results.append(done)
        if bar is not None:
            bar.update(1)
        if on_batch is not None:
            on_batch(index, done)
    if bar is not None:
        bar.close()
    if shape is None:  # no batch at all
        raise InvalidArgument("data: no examples")
    cat = {k: np.concatenate([r[k] for r in results]) for k in ("logp", "probe_var", "log_q")}
    dim = math.prod(shape)
    nfe = float(np.sum([r["nfe"] * r["logp"].shape[0] for r in results]) / cat["logp"].shape[0]) * draws
    seconds = float(np.sum([r["seconds"] for r in results]))
    protocol = "none" if dequantization is None else dequantization.name
    log_volume = 0.0 if quantization is None else quantization.log_bin_volume(dim)  # None iff dequantization is
    probe_var = cat["probe_var"] if probe_rows != 1 else None
    if not np.all(np.isfinite(cat["logp"])):
        raise InvalidArgument(f"score: {int((~np.isfinite(cat['logp'])).sum())} log-densities are not finite; the "
                              f"model's score is not finite on this data")
    common: dict[str, Any] = dict(dim=dim, num_examples=cat["logp"].shape[0], draws=draws, nfe_per_example=nfe,
                                  wall_time=seconds)
    space = None
    if to_data_space is not None:
        logp_data = np.concatenate([r["logp_data"] for r in results])
        L, mean, se = summarize("none", logp_data, probe_var, cat["log_q"], 0.0)
        space = DatasetLikelihood("none", mean, se, L, logp_data, offset_bits=0.0, **common)
    L, mean, se = summarize(protocol, cat["logp"], probe_var, cat["log_q"], log_volume)
    offset = 0.0 if quantization is None else quantization.offset_bits
    return DatasetLikelihood(protocol, mean, se, L, cat["logp"], offset_bits=offset, data_space=space, **common)


def _one_batch(batch_fn, chunk: np.ndarray, batch_size: int, key, quantization, dequantization,
               to_data_space) -> dict:
    """One batch, padded to ``batch_size`` rows (one compiled program for every batch); padded rows dropped."""
    n = chunk.shape[0]
    dtype = jnp.result_type(float)
    y = jnp.asarray(chunk)
    if dequantization is not None:
        _check_levels(chunk, quantization)
    y = jnp.concatenate([y, jnp.broadcast_to(y[-1:], (batch_size - n,) + y.shape[1:])]) if n < batch_size else y
    y = y.astype(dtype)
    k_u, k_p = jax.random.split(key)
    if dequantization is None:
        x, log_q, m = y, jnp.zeros((1, batch_size), dtype), 1
    else:
        u, log_q = dequantization.offsets(k_u, y)
        m = u.shape[0]
        x = jnp.reshape(quantization.to_model(y[None], u), (m * batch_size,) + y.shape[1:])
    logp, probe_var, nfe = batch_fn(x, k_p)
    per = lambda v: np.asarray(jnp.reshape(v, (m, batch_size)).T[:n])  # noqa: E731 (M, B) -> (n, M)
    out = {"logp": per(logp), "probe_var": per(probe_var), "log_q": per(log_q), "nfe": np.asarray(nfe)}
    if to_data_space is not None:
        out["logp_data"] = per(to_data_space(logp, x))
    return out


def _probe_rows(divergence) -> int:
    """P, the probe rows of one solve: 0 for the exact trace (no probe noise), else the number of probes."""
    if isinstance(divergence, Exact):
        return 0
    return int(getattr(divergence, "num_probes", 1))


def _solve_kwargs(options: SolveOptions | None) -> dict:
    if options is None:
        return {}
    if not isinstance(options, SolveOptions):
        raise InvalidArgument(f"options: expected a dg.SolveOptions (solver, steps, rtol, atol, ...); got {options!r}")
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return {name: value for name, value in fields.items() if value is not None}


# ------------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------------
def evaluate_likelihood(score: Callable, process, data, *, key,
                        dequantization: Dequantization | None = UniformDequantization(),
                        quantization: Quantization | None = None, batch_size: int = 64,
                        divergence: DivergenceEstimator | None = None, options: SolveOptions | None = None,
                        devices: Sequence | None = None, checkpoint_dir: str | None = None, progress: bool = False,
                        on_batch: Callable[[int, dict], Any] | None = None,
                        to_data_space: Callable | None = None,
                        prior_log_prob: Callable | None = None) -> DatasetLikelihood:
    """Log-likelihood (bits/dim) of a data set under a model, by PF-ODE encoding (``dg.log_likelihood``).

    Args:
      score, process: the model (``model.score``, ``model.process``).
      data: (N, *shape) array, or an iterable of (n_i, *shape) arrays (batched afresh): integer levels for
        discrete data (``Dataset.data_split``), model-space values for continuous data.
      key: PRNG key; batch i uses ``fold_in(key, i)`` (split into dequantization and probe keys).
      dequantization: ``UniformDequantization(repeats)``, ``ImportanceDequantization(draws, proposal)``, or
        None for continuous data (module docstring).
      quantization: the data's ``dg.Quantization`` (``Dataset.quantization``); required unless continuous.
      batch_size: examples per batch; each batch encodes ``batch_size * draws`` copies in one solve, padded
        to a multiple of the device count and spread over ``devices`` (default all).
      divergence, options: the divergence estimator (default ``dg.Hutchinson()``) and a ``dg.SolveOptions``
        (default adaptive Tsit5, rtol = atol = 1e-5) of every encoding.
      checkpoint_dir: a directory for per-batch results; a rerun with the same settings skips finished batches
        (same numbers as an uninterrupted run); other settings or other data raise ``dg.InvalidArgument``. The
        score itself is not part of the settings: use one directory per model.
      progress: a tqdm progress bar. on_batch(index, arrays): called after each batch.
      to_data_space(logp (M * B,), x (M * B, *shape)) -> (M * B,): continuous data only, log p in another space
        (e.g. ``GalaxyModel.data_log_prob``), reported as ``.data_space``.
      prior_log_prob: as ``dg.log_likelihood``'s (default ``process.prior_log_prob``).

    Returns a ``DatasetLikelihood`` (mean bits/dim and nats, standard errors split into data, dequantization
    and probe parts, NFE per example, wall time).
    """
    from .parallel import log_likelihood_sharded

    divergence = Hutchinson() if divergence is None else divergence
    if not isinstance(divergence, DivergenceEstimator):
        raise InvalidArgument(f"divergence: expected a dg.DivergenceEstimator such as dg.Hutchinson(); "
                              f"got {divergence!r}")
    kwargs = _solve_kwargs(options)

    def batch_fn(x, k):
        ll = log_likelihood_sharded(score, process, x, devices=devices, pad=True, divergence=divergence,
                                    key=None if isinstance(divergence, Exact) else k, prior_log_prob=prior_log_prob,
                                    **kwargs)
        return ll.logp, ll.logp_stderr**2, ll.nfe

    settings = {"model": "score", "process": repr(process), "divergence": repr(divergence), "options": repr(options),
                "prior_log_prob": prior_log_prob is not None}
    return _run(batch_fn, data, quantization=quantization, dequantization=dequantization, batch_size=batch_size,
                key=key, settings=settings, checkpoint_dir=checkpoint_dir, progress=progress, on_batch=on_batch,
                to_data_space=to_data_space, probe_rows=_probe_rows(divergence))


def evaluate_log_density(log_prob: Callable, data, *, key,
                         dequantization: Dequantization | None = UniformDequantization(),
                         quantization: Quantization | None = None, batch_size: int = 64,
                         checkpoint_dir: str | None = None, progress: bool = False,
                         on_batch: Callable[[int, dict], Any] | None = None) -> DatasetLikelihood:
    """``evaluate_likelihood`` for a model with an exact log-density ``log_prob(x (B, *shape)) -> (B,)`` (a
    flow, or the oracle ``lambda x: mixture.log_prob(process)(x, t)``): the same protocols, batches, keys and
    checkpoints, with no ODE and no probes (NFE counts density evaluations)."""
    fn = jax.jit(log_prob)

    def batch_fn(x, k):
        logp = fn(x)
        return logp, jnp.zeros_like(logp), jnp.asarray(1)

    return _run(batch_fn, data, quantization=quantization, dequantization=dequantization, batch_size=batch_size,
                key=key, settings={"model": "log_prob"}, checkpoint_dir=checkpoint_dir, progress=progress,
                on_batch=on_batch, to_data_space=None, probe_rows=0)
