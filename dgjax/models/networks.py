"""Score networks (Flax linen), conditioned on the log-SNR, and their parameter trees.

Networks predict the noise eps (or the velocity v for flow models) from ``(x_t, lambda_t)`` -- they are
conditioned on the log-SNR ``lambda_t = log(alpha_t^2 / sigma_t^2)``, not on t, so one network serves any
parametrisation of time:

* ``MLP``: for low-dimensional data (the 2-D toys): the flattened input concatenated with a sinusoidal
  log-SNR embedding, ``depth`` SiLU layers of ``width``, a zero-initialised output layer.
* ``UNet``: for images (channels last): residual blocks (GroupNorm, SiLU, 3x3 conv, the log-SNR embedding
  added per channel, dropout), self-attention at the resolutions in ``attn_resolutions``, a middle block
  with attention, skip connections, and a zero-initialised output convolution.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .._io import leaf_shapes
from ..errors import ArchitectureMismatch, ModelError


# ------------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------------
def logsnr_embedding(lam, dim: int, scale: float = 50.0):
    """Sinusoidal embedding of the log-SNR: (N,) -> (N, dim); ``scale * lambda`` spans about +-500 on
    lambda in [-10, 10], like the usual 0..1000 time-step embeddings."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = (scale * lam.astype(jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _broadcast_lam(lam, n):
    lam = jnp.asarray(lam, jnp.float32)
    return jnp.broadcast_to(lam, (n,)) if lam.ndim == 0 else lam


class MLP(nn.Module):
    """eps-predictor for flat low-dimensional data: x (N, *shape), lam (N,) -> (N, *shape)."""

    width: int = 256
    depth: int = 3
    emb_dim: int = 64
    dtype: Any = None  # compute dtype (None: float32); parameters stay float32

    @nn.compact
    def __call__(self, x, lam, train: bool = False):
        n, shape = x.shape[0], x.shape[1:]
        dt = _compute_dtype(self.dtype)
        lam = _broadcast_lam(lam, n)
        emb = nn.Dense(self.width, dtype=self.dtype)(logsnr_embedding(lam, self.emb_dim))
        h = jnp.concatenate([x.reshape(n, -1).astype(dt), nn.silu(emb).astype(dt)], axis=-1)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.width, dtype=self.dtype)(h))
        out = nn.Dense(math.prod(shape), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        return out.reshape(x.shape)


def _compute_dtype(dtype):
    return jnp.float32 if dtype is None else dtype


def _groups(c):
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    out_ch: int
    dropout: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x, emb, train: bool):
        dt = self.dtype
        h = nn.silu(nn.GroupNorm(_groups(x.shape[-1]), dtype=dt)(x))
        h = nn.Conv(self.out_ch, (3, 3), dtype=dt)(h)
        h = h + nn.Dense(self.out_ch, dtype=dt)(emb)[:, None, None, :]
        h = nn.silu(nn.GroupNorm(_groups(self.out_ch), dtype=dt)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=dt)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), dtype=dt)(x)
        return x + h


class AttnBlock(nn.Module):
    num_heads: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        n, hh, ww, c = x.shape
        h = nn.GroupNorm(_groups(c), dtype=self.dtype)(x).reshape(n, hh * ww, c)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, out_kernel_init=nn.initializers.zeros,
                                            dtype=self.dtype)(h, h)
        return x + h.reshape(n, hh, ww, c)


class UNet(nn.Module):
    """eps-predictor for images x (N, H, W, C) conditioned on the log-SNR lam (N,).

    ``ch_mult[i] * channels`` channels at level i (resolution H / 2^i), ``num_res_blocks`` residual blocks
    per level (one more on the way up), attention where the resolution is in ``attn_resolutions``.
    """

    channels: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (4,)
    dropout: float = 0.1
    num_heads: int = 1
    dtype: Any = None  # compute dtype (None: float32); parameters stay float32

    @nn.compact
    def __call__(self, x, lam, train: bool = False):
        n, res = x.shape[0], x.shape[1]
        dt = self.dtype
        lam = _broadcast_lam(lam, n)
        emb = logsnr_embedding(lam, self.channels)  # float32 (sin of 50 lambda needs it), cast by the Dense
        emb = nn.Dense(4 * self.channels, dtype=dt)(emb)
        emb = nn.Dense(4 * self.channels, dtype=dt)(nn.silu(emb))
        emb = nn.silu(emb)
        h = nn.Conv(self.channels, (3, 3), dtype=dt)(x.astype(_compute_dtype(dt)))
        skips = [h]
        for i, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.channels * mult, self.dropout, dt)(h, emb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(self.num_heads, dt)(h)
                skips.append(h)
            if i != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=dt)(h)
                res //= 2
                skips.append(h)
        h = ResBlock(h.shape[-1], self.dropout, dt)(h, emb, train)
        h = AttnBlock(self.num_heads, dt)(h)
        h = ResBlock(h.shape[-1], self.dropout, dt)(h, emb, train)
        for i, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(self.channels * mult, self.dropout, dt)(h, emb, train)
                if res in self.attn_resolutions:
                    h = AttnBlock(self.num_heads, dt)(h)
            if i != 0:
                h = jax.image.resize(h, (n, 2 * h.shape[1], 2 * h.shape[2], h.shape[3]), "nearest")
                h = nn.Conv(h.shape[-1], (3, 3), dtype=dt)(h)
                res *= 2
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=dt)(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, dtype=dt)(h)


ARCHITECTURES = {"mlp": MLP, "unet": UNet}


def make_network(arch: str, shape, arch_kwargs: dict | None = None) -> nn.Module:
    """The network ``arch`` ("mlp" or "unet") with ``arch_kwargs``, checked against the data ``shape``."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"arch: unknown {arch!r}; choose one of {tuple(ARCHITECTURES)}")
    kwargs = dict(arch_kwargs or {})
    for k in ("ch_mult", "attn_resolutions"):
        if k in kwargs:
            kwargs[k] = tuple(kwargs[k])
    try:
        net = ARCHITECTURES[arch](**kwargs)
    except TypeError as e:
        raise ModelError(f"arch_kwargs for {arch!r}: {e}") from e
    shape = tuple(shape)
    if arch == "unet":
        if len(shape) != 3:
            raise ModelError(f"the unet needs image data of shape (H, W, C); got shape {shape}")
        down = 2 ** (len(net.ch_mult) - 1)
        if shape[0] % down or shape[1] % down:
            raise ModelError(f"the unet halves the resolution {len(net.ch_mult) - 1} times, so H and W must be "
                             f"multiples of {down}; got shape {shape}")
    return net


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(net, shape, key):
    # the initialisers draw from an RBG key derived from ``key``: XLA's RngBitGenerator compiles several
    # times faster than unrolled threefry for the dozens of parameter tensors of a UNet
    key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    x = jnp.zeros((1,) + shape, jnp.float32)
    return net.init({"params": key}, x, jnp.zeros((1,), jnp.float32), train=False)["params"]


def init_params(net: nn.Module, shape, key) -> dict:
    """Freshly initialised parameters: one compiled call (not op by op), cached per (network, shape)."""
    return _init(net, tuple(int(d) for d in shape), key)


def param_shapes(net: nn.Module, shape) -> dict:
    """The parameter tree of ``net`` on data ``shape`` as {path: shape} (no computation)."""
    tree = jax.eval_shape(lambda k: init_params(net, shape, k), jax.random.key(0))
    return leaf_shapes(tree)


def num_params(params) -> int:
    return int(sum(np.prod(np.shape(v)) for v in jax.tree_util.tree_leaves(params)))


def check_same_architecture(expected: dict, got: dict, where: str) -> None:
    """Raise ``ArchitectureMismatch`` naming the first differences between two {path: shape} maps."""
    if expected == got:
        return
    diffs = []
    for k in sorted(set(expected) | set(got)):
        a, b = expected.get(k), got.get(k)
        if a != b:
            diffs.append(f"{k}: architecture expects {a if a is not None else 'nothing'}, "
                         f"stored {b if b is not None else 'nothing'}")
    more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
    raise ArchitectureMismatch(
        f"{where} was written by a different architecture than the one configured: "
        + "; ".join(diffs[:5]) + more
        + ". Load it with the config it was trained with, or start a new run in another directory.")

