"""Pretrained galaxy score networks from ``galaxygrad`` 0.1.5 (the optional extra ``dgjax[galaxies]``).

``dg.load_model("galaxies-hsc32" | "galaxies-hsc64" | "galaxies-ztf32" | "galaxies-ztf64")`` returns a
``GalaxyModel``: galaxygrad's per-sample Equinox ScoreNet (Hyper Suprime-Cam or Zwicky Transient Facility,
32x32 or 64x64, one band), which predicts the score in its own network space directly, wrapped by
``dg.external_score``. Its process is galaxygrad's ``int_beta(t) = t``: ``dg.VPSDE(1, 1, 10)``, alpha_t =
exp(-t/2), sigma_t^2 = 1 - exp(-t), t in [1e-3, 10], prior N(0, (1 - e^-10) I).

Spaces. The network space is y = log(x + 1) / 0.1 of the image flux x. Samples (``dg.sample``) and every
log p dgjax reports are in y-space (the density the network defines); ``model.transform`` is the
``dg.log_transform(0.1, 1)`` change of variables, and ``model.data_log_prob(logp_y, y)`` gives log p of the
flux, log p_Y(y) + sum_i log|dy/dx_i| (docs/math.md section 4). dgjax's image layout is (N, H, W, 1); the adapter
transposes to galaxygrad's (1, H, W).

Only galaxygrad 0.1.5 is accepted: it ships the weights in its wheel (later versions download them at run
time). A missing or different galaxygrad raises ``ModelError`` naming the extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..errors import ModelError
from ..external import ElementwiseTransform, Opaque, external_score, log_transform
from ..processes import VPSDE
from .trained import Model

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
    import jax

    # galaxygrad deserialises its float32 weights at import, against templates built in the default dtype:
    # under jax_enable_x64 they would be float64 and the import fails; the weights are float32 either way
    with jax.enable_x64(False):
        from galaxygrad import scorenet

    return scorenet


class GalaxyModel(Model):
    """A galaxygrad network as a dgjax model, a pytree whose leaves are the network's parameters (``.params``:
    the Equinox module's float arrays; its other fields are static): ``.score`` (batched score in y-space,
    x (N, H, W, 1)), ``.process`` (``dg.VPSDE(1, 1, 10)``), ``.shape`` (H, W, 1), ``.network`` (the per-sample
    Equinox module, (1, H, W), scalar t), ``.transform`` (y = log(x + 1) / 0.1), ``.name``, ``.dim``."""

    name: str = eqx.field(static=True)
    params: Any
    structure: Opaque = eqx.field(static=True)  # the network's non-array fields (activations, sizes)
    process: Any = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)
    transform: ElementwiseTransform = eqx.field(static=True)

    def __init__(self, name: str, network, process, shape: tuple, transform: ElementwiseTransform):
        params, structure = eqx.partition(network, eqx.is_inexact_array)
        self.name, self.params, self.structure = name, params, Opaque(structure)
        self.process, self.shape, self.transform = process, tuple(shape), transform

    @property
    def network(self):
        return eqx.combine(self.params, self.structure.value)

    def score(self, x, t):
        """galaxygrad's score prediction in y-space (``dg.external_score``), x (N, H, W, 1)."""
        return external_score(_PerSample(self.network), self.process, "score")(x, t)

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

    def data_log_prob(self, logp_y, y):
        """log p of the flux x = exp(0.1 y) - 1 from the network-space log p_Y(y): + sum log|dy/dx|."""
        return self.transform.data_log_prob(logp_y, y)

    def to_flux(self, y):
        return self.transform.inverse(y)


class _PerSample(eqx.Module):
    """dgjax (H, W, 1) <-> galaxygrad (1, H, W); the network computes in float32."""

    net: Any

    def __call__(self, y, t):
        out = self.net(jnp.transpose(y, (2, 0, 1)).astype(jnp.float32), t.astype(jnp.float32))
        return jnp.transpose(out, (1, 2, 0)).astype(y.dtype)


def load_galaxy_model(name: str) -> GalaxyModel:
    if name not in _NETS:
        raise ModelError(f"unknown galaxy model {name!r}; choose one of {GALAXY_MODELS}")
    scorenet = _galaxygrad_scorenet()
    attr, res = _NETS[name]
    return GalaxyModel(name, getattr(scorenet, attr), galaxy_process(), (res, res, 1), log_transform(0.1, 1.0))
