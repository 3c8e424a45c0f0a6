"""The small UNet the tests build (it compiles in seconds), the model-file configuration of one and random
parameters for it: the one home of each, imported by the test modules (pytest puts tests/ on the path)."""

import jax
import jax.numpy as jnp
import numpy as np

from dgjax.models import init_params, make_network

# 8 channels, two levels, attention at 4x4, no dropout: the smallest UNet that exercises every block
TINY_UNET = dict(channels=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0)


def tiny_model_config(**over) -> dict:
    """A model file's configuration (``dgjax.models.save_model``) for the tiny UNet on 8x8 digits, eps-prediction
    on VP with log-SNR in [-10, 10]; ``over`` replaces keys."""
    cfg = {"name": "tiny", "arch": "unet", "arch_kwargs": dict(TINY_UNET), "shape": [8, 8, 1],
           "process": {"name": "VP", "lambda_min": -10.0, "lambda_max": 10.0}, "parametrization": "eps",
           "data": "digits", "data_kwargs": {}}
    cfg.update(over)
    return cfg


def random_params(cfg: dict, seed: int = 0):
    """Random parameters of the config's architecture (numpy draws on the abstract shapes: no compile), so
    no entry is zero (a stronger round-trip check than the zero-initialised output layers, and a score that
    depends on every layer)."""
    net = make_network(cfg["arch"], cfg["shape"], cfg["arch_kwargs"])
    shapes = jax.eval_shape(lambda k: init_params(net, cfg["shape"], k), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda v: jnp.asarray(0.1 * rng.standard_normal(v.shape), jnp.float32), shapes)
