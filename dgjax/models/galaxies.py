"""Pretrained galaxy score networks from ``galaxygrad`` 0.1.5 (the optional extra ``dgjax[galaxies]``).

``dg.load_model("galaxies-hsc32" | "galaxies-hsc64" | "galaxies-ztf32" | "galaxies-ztf64")`` returns a
``GalaxyModel``: galaxygrad's per-sample Equinox ScoreNet (Hyper Suprime-Cam or Zwicky Transient Facility,
32x32 or 64x64, one band), which predicts the score in its own network space directly, wrapped by
``dg.external_score``. Its process is galaxygrad's ``int_beta(t) = t``: ``dg.VPSDE(1, 1, 10)``, alpha_t =
exp(-t/2), sigma_t^2 = 1 - exp(-t), t in [1e-3, 10], prior N(0, (1 - e^-10) I).

Spaces. The network space is y = log(x + 1) / 0.1 of the image flux x. Samples (``dg.sample``) and every
log p dgjax reports are in y-space (the density the network defines); ``model.transform`` is the
``dg.log_transform(0.1, 1)`` change of variables, and ``model.data_log_prob(logp_y, y)`` gives log p of the
flux, log p_Y(y) + sum_i log|dy/dx_i| (MATH.md section 4). dgjax's image layout is (N, H, W, 1); the adapter
transposes to galaxygrad's (1, H, W).

Only galaxygrad 0.1.5 is accepted: it ships the weights in its wheel (later versions download them at run
time). A missing or different galaxygrad raises ``ModelError`` naming the extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..external import ElementwiseTransform, external_score, log_transform
from ..processes import VPSDE

GALAXY_MODELS = ("galaxies-hsc32", "galaxies-hsc64", "galaxies-ztf32", "galaxies-ztf64")
GALAXYGRAD_VERSION = "0.1.5"
_NETS = {"galaxies-hsc32": ("HSC_32", 32), "galaxies-hsc64": ("HSC_64", 64),
         "galaxies-ztf32": ("ZTF_32", 32), "galaxies-ztf64": ("ZTF_64", 64)}
_INSTALL = f"install the extra: pip install 'dgjax[galaxies]' (galaxygrad=={GALAXYGRAD_VERSION})"


def galaxy_process() -> VPSDE:
    """galaxygrad's process: constant beta = 1 on [1e-3, 10] (int_beta(t) = t)."""
    return VPSDE(1.0, 1.0, 10.0, t_min=1e-3)


class AsinhDisplay:
    """Display stretch for galaxy images (``save_image_grid``, PNG sizes): flux x = exp(0.1 y) - 1, then
    asinh(x / 0.05) / asinh(1 / 0.05) clipped to [0, 1] (black at flux 0, white at flux 1; the model's samples
    reach about 1): faint outskirts and bright cores both visible, the same mapping for every image."""

    softening = 0.05
    white = 1.0

    def to_uint8(self, y):
        flux = np.expm1(0.1 * np.asarray(y, np.float64))
        v = np.arcsinh(np.clip(flux, 0.0, None) / self.softening) / np.arcsinh(self.white / self.softening)
        return np.round(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8)

    def clipped(self, y):
        """Pixels the stretch saturates: flux below 0 (black) or above ``white`` (white); same shape as y."""
        flux = np.expm1(0.1 * np.asarray(y, np.float64))
        return (flux < 0.0) | (flux > self.white)


@dataclass(frozen=True)
class _GalaxyData:
    """What the CLI reads from ``model.dataset``: the display transform; offset_bits 0 (no quantisation)."""

    name: str
    transform: Any = field(default_factory=AsinhDisplay)
    offset_bits: float = 0.0


def _galaxygrad_scorenet():
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("galaxygrad")
        except PackageNotFoundError:
            v = None
    except ImportError:  # pragma: no cover
        v = None
    # ImportError here (galaxies sits below models); dg.load_model turns it into a dg.ModelError
    if v is None:
        raise ImportError(f"the galaxy models need galaxygrad, which is not installed; {_INSTALL}")
    if v != GALAXYGRAD_VERSION:
        raise ImportError(f"the galaxy models need galaxygrad=={GALAXYGRAD_VERSION} (it ships the weights); "
                         f"galaxygrad {v} is installed; {_INSTALL}")
    from galaxygrad import scorenet

    return scorenet


@dataclass(frozen=True)
class GalaxyModel:
    """A galaxygrad network as a dgjax model: ``.score`` (batched score in y-space, x (N, H, W, 1)),
    ``.process`` (``dg.VPSDE(1, 1, 10)``), ``.shape`` (H, W, 1), ``.network`` (the per-sample Equinox
    module, (1, H, W), scalar t), ``.transform`` (y = log(x + 1) / 0.1), ``.name``, ``.dim``."""

    name: str
    network: Any
    process: Any
    shape: tuple
    transform: ElementwiseTransform
    score: Any = field(repr=False)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def config(self) -> dict:
        return {"name": self.name, "data": f"galaxygrad {self.name[9:].upper()} (log flux space)"}

    @property
    def dataset(self):
        return _GalaxyData(self.name)

    @property
    def data_range(self) -> None:
        """None: the log-flux space y has no fixed bounds, so guidance is not range-checked."""
        return None

    def prior_sample(self, key, n: int):
        return self.process.prior_sample(key, (n,) + self.shape)

    def data_log_prob(self, logp_y, y):
        """log p of the flux x = exp(0.1 y) - 1 from the network-space log p_Y(y): + sum log|dy/dx|."""
        return self.transform.data_log_prob(logp_y, y)

    def to_flux(self, y):
        return self.transform.inverse(y)


def load_galaxy_model(name: str) -> GalaxyModel:
    if name not in _NETS:
        raise ValueError(f"unknown galaxy model {name!r}; choose one of {GALAXY_MODELS}")
    scorenet = _galaxygrad_scorenet()
    attr, res = _NETS[name]
    net = getattr(scorenet, attr)
    process = galaxy_process()

    def per_sample(y, t):  # dgjax (H, W, 1) <-> galaxygrad (1, H, W); the network computes in float32
        out = net(jnp.transpose(y, (2, 0, 1)).astype(jnp.float32), t.astype(jnp.float32))
        return jnp.transpose(out, (1, 2, 0)).astype(y.dtype)

    score = external_score(per_sample, process, "score")
    return GalaxyModel(name, net, process, (res, res, 1), log_transform(0.1, 1.0), score)
