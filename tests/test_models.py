"""Score networks, model files (exact round trip, architecture check, corrupt files, atomic writes) and the
shipped models (they load, and their score samples through dg.sample with the log-density tracked)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY_UNET, random_params, tiny_model_config

import dgjax as dg
from dgjax.models import (
    SHIPPED_MODELS,
    WEIGHTS_DIR,
    ArchitectureMismatch,
    ModelError,
    TrainedModel,
    init_params,
    load_model,
    make_network,
    save_model,
)


@pytest.mark.parametrize("arch,shape,kwargs", [("unet", (8, 8, 1), TINY_UNET),
                                               ("unet", (16, 16, 3), dict(TINY_UNET, ch_mult=[1, 2, 2])),
                                               ("mlp", (2,), dict(width=32, depth=2))])
def test_networks_map_x_and_logsnr_to_eps_shape(arch, shape, kwargs):
    net = make_network(arch, shape, kwargs)
    params = random_params({"arch": arch, "shape": list(shape), "arch_kwargs": kwargs})
    x = jnp.ones((3,) + shape)
    apply = jax.jit(lambda p, x, lam: net.apply({"params": p}, x, lam))
    out = apply(params, x, jnp.array([-5.0, 0.0, 5.0]))
    assert out.shape == x.shape and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    # a scalar log-SNR broadcasts over the batch
    assert jax.eval_shape(apply, params, x, jnp.asarray(1.0)).shape == x.shape


def test_fresh_networks_predict_zero():
    """The output layers are zero-initialised: eps_hat = 0, so the score starts as -0 / sigma = 0."""
    net = make_network("unet", (8, 8, 1), TINY_UNET)
    params = init_params(net, (8, 8, 1), jax.random.key(0))
    out = jax.jit(lambda p, x: net.apply({"params": p}, x, jnp.zeros(2)))(params, jnp.ones((2, 8, 8, 1)))
    np.testing.assert_array_equal(out, 0.0)


def test_unet_rejects_incompatible_shapes():
    with pytest.raises(ModelError, match="multiples of 2"):
        make_network("unet", (7, 7, 1), TINY_UNET)
    with pytest.raises(ModelError, match="shape \\(H, W, C\\)"):
        make_network("unet", (64,), TINY_UNET)
    with pytest.raises(ModelError, match="unknown 'transformer'"):
        make_network("transformer", (8, 8, 1))


def test_save_load_round_trips_exactly(tmp_path):
    cfg = tiny_model_config()
    params = random_params(cfg)
    save_model(str(tmp_path / "m"), params, cfg)
    model = load_model(str(tmp_path / "m.msgpack"))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(model.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert model.shape == (8, 8, 1) and isinstance(model.process, dg.VP)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    t = jnp.asarray(0.3)
    same = TrainedModel(model.network, params, cfg)
    score_and_eps = jax.jit(lambda p, x, t: (TrainedModel(model.network, p, cfg).score(x, t),
                                             TrainedModel(model.network, p, cfg).apply(x, t)))
    s_loaded, eps_loaded = score_and_eps(model.params, x, t)
    s_orig, _ = score_and_eps(same.params, x, t)
    np.testing.assert_array_equal(s_loaded, s_orig)
    # the score is the eps-parametrisation: s = -eps_hat / sigma
    np.testing.assert_allclose(s_loaded, -eps_loaded / model.process.sigma(t), rtol=1e-5)
    # a directory with model.msgpack/model.json loads too
    save_model(str(tmp_path / "model"), params, cfg)
    assert load_model(str(tmp_path)).config["arch_kwargs"] == TINY_UNET


def test_model_of_another_architecture_is_refused(tmp_path):
    cfg = tiny_model_config()
    save_model(str(tmp_path / "m"), random_params(cfg), cfg)
    other = tiny_model_config(arch_kwargs=dict(TINY_UNET, channels=16))
    with open(tmp_path / "m.json", "w") as fh:
        json.dump(other, fh)
    with pytest.raises(ArchitectureMismatch, match="different architecture.*expects \\("):
        load_model(str(tmp_path / "m.msgpack"))
    with pytest.raises(ArchitectureMismatch, match="different architecture"):
        save_model(str(tmp_path / "n"), random_params(cfg), other)
    assert not os.path.exists(tmp_path / "n.msgpack")


def test_corrupt_or_truncated_model_files_are_clear_errors(tmp_path):
    cfg = tiny_model_config()
    save_model(str(tmp_path / "m"), random_params(cfg), cfg)
    blob = (tmp_path / "m.msgpack").read_bytes()
    (tmp_path / "m.msgpack").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_model(str(tmp_path / "m.msgpack"))
    (tmp_path / "m.msgpack").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="corrupt|different architecture"):
        load_model(str(tmp_path / "m.msgpack"))
    (tmp_path / "m.msgpack").write_bytes(blob)
    text = (tmp_path / "m.json").read_text()
    (tmp_path / "m.json").write_text(text[: len(text) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_model(str(tmp_path / "m.msgpack"))


def test_unknown_model_and_unwritable_output_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'cifar'.*shipped model"):
        load_model("cifar")
    with pytest.raises(ModelError, match="does not exist"):
        save_model(str(tmp_path / "missing" / "m"), random_params(tiny_model_config()), tiny_model_config())
    with pytest.raises(ModelError, match="could not write"):
        save_model("/proc/dgjax-model", random_params(tiny_model_config()), tiny_model_config())
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "patches" else n  # 16 s each
                                  for n in SHIPPED_MODELS])
def test_shipped_models_load_and_sample_with_tracked_logp(name):
    path = os.path.join(WEIGHTS_DIR, name + ".msgpack")
    assert os.path.exists(path), f"shipped model file {path} is missing"
    assert os.path.getsize(path) < 10 * 2**20
    model = dg.load_model(name)
    assert model.config["name"] == name and model.config["heldout_bits_per_dim"] > 0
    assert model.shape == tuple(model.dataset.shape)
    x_T = model.prior_sample(jax.random.key(0), 2)
    out = dg.sample(model.score, model.process, x_T, key=jax.random.key(1), track_logp=True, steps=3)
    assert out.x.shape == (2,) + model.shape
    assert np.all(np.isfinite(np.asarray(out.x))) and np.all(np.isfinite(np.asarray(out.logp)))
