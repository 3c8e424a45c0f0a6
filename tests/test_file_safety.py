"""Files dgjax writes and reads: no write through a planted link, no unbounded or blocking read, model
files checked (dtypes, checksum, config) before use (issue 24: items 8 and 9 and the file items)."""

import os
import shutil

import pytest

from dgjax.cli import main


def _plant(directory, names, victims_dir):
    """A symbolic link at each of ``names`` in ``directory``, each to its own victim file; returns the victims."""
    victims = {}
    for name in names:
        victim = victims_dir / f"victim-{len(victims)}"
        victim.write_bytes(b"precious")
        os.symlink(victim, directory / name)
        victims[name] = victim
    return victims


def _write_grid(path):
    import numpy as np

    from dgjax.data import load_dataset, save_labelled_grid

    save_labelled_grid(path, np.zeros((1, 2, 8, 8, 1)), load_dataset("digits").transform, ["row"])


def _pids():
    pid = os.getpid()
    return [p for p in range(pid - 100, pid + 101) if p > 0]


def test_sample_and_train_never_write_through_planted_links(tmp_path, capsys):
    out_dir, run, victims_dir = tmp_path / "out", tmp_path / "run", tmp_path / "victims"
    for d in (out_dir, run, victims_dir):
        d.mkdir()
    # the names the old code used: .NAME.tmp-<pid> (atomic writes) and RUN/.write-test-<pid> (train's probe)
    victims = _plant(out_dir, [f".grid.png.tmp-{p}" for p in _pids()], victims_dir)
    victims.update(_plant(run, [f".write-test-{p}" for p in _pids()]
                          + [f".{n}.tmp-{p}" for n in ("config.json", "time.json", "model.json", "model.msgpack")
                             for p in _pids()], victims_dir))
    _write_grid(out_dir / "grid.png")  # what `dgjax sample --out` writes, by the same atomic write
    assert main(["train", "--data", "moons", "--arch", "mlp", "--width", "8", "--depth", "1", "--steps", "2",
                 "--ckpt-every", "2", "--final-eval-num", "4", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert all(v.read_bytes() == b"precious" for v in victims.values())
    assert (out_dir / "grid.png").read_bytes()[:4] == b"\x89PNG" and not (out_dir / "grid.png").is_symlink()
    assert (run / "model.msgpack").is_file() and not (run / "model.msgpack").is_symlink()


def test_a_link_at_the_output_name_is_replaced_not_followed(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, tmp_path / "grid.png")
    _write_grid(tmp_path / "grid.png")
    assert victim.read_bytes() == b"precious" and not (tmp_path / "grid.png").is_symlink()


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl"])
def test_train_refuses_a_planted_lock_or_log_link(tmp_path, name, capsys):
    run, victim = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    victim.write_bytes(b"precious")
    os.symlink(victim, run / name)
    assert main(["train", "--data", "moons", "--arch", "mlp", "--width", "8", "--depth", "1", "--steps", "2",
                 "--ckpt-every", "2", "--final-eval-num", "4", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dgjax: error:") and "link" in err[0], err
    assert victim.read_bytes() == b"precious"


# ------------------------------------------------------------------------------------------------------
# model files: dtypes, checksum, config, file kind, name resolution
# ------------------------------------------------------------------------------------------------------
import hashlib  # noqa: E402
import json  # noqa: E402

import flax.serialization  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from tiny import random_params, tiny_model_config  # noqa: E402

from dgjax.errors import ArchitectureMismatch, ModelError  # noqa: E402
from dgjax.models import load_model, save_model  # noqa: E402


def _saved(tmp_path, name="m"):
    cfg = tiny_model_config()
    save_model(str(tmp_path / name), random_params(cfg), cfg)
    return tmp_path / f"{name}.msgpack", tmp_path / f"{name}.json"


def _rewrite(msgpack, js, state):
    """Write ``state`` as the parameters, with a matching checksum in the config (only the dtype is wrong)."""
    blob = flax.serialization.msgpack_serialize(state)
    msgpack.write_bytes(blob)
    cfg = json.loads(js.read_text())
    js.write_text(json.dumps(dict(cfg, params_sha256=hashlib.sha256(blob).hexdigest())))


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64, np.float64, np.float16])
def test_model_file_with_parameters_of_another_dtype_is_refused(tmp_path, dtype, capsys):
    msgpack, js = _saved(tmp_path)
    state = flax.serialization.msgpack_restore(msgpack.read_bytes())
    _rewrite(msgpack, js, jax.tree_util.tree_map(lambda v: np.asarray(v).astype(dtype), state))
    with pytest.raises(ArchitectureMismatch, match="another dtype than the architecture's.*expects float32"):
        load_model(str(msgpack))
    assert main(["likelihood", "--model", str(msgpack), "--num", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dtype" in err[0]


def test_save_model_refuses_non_float_parameters(tmp_path):
    cfg = tiny_model_config()
    params = jax.tree_util.tree_map(lambda v: np.asarray(v).astype(np.int32), random_params(cfg))
    with pytest.raises(ModelError, match="real floating-point"):
        save_model(str(tmp_path / "m"), params, cfg)
    assert not os.path.exists(tmp_path / "m.msgpack")


def test_flipped_low_bits_in_a_model_file_are_caught_by_its_checksum(tmp_path):
    msgpack, js = _saved(tmp_path)
    assert len(json.loads(js.read_text())["params_sha256"]) == 64
    load_model(str(msgpack))  # intact: loads
    state = flax.serialization.msgpack_restore(msgpack.read_bytes())
    leaves, treedef = jax.tree_util.tree_flatten(state)
    flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in leaves]).view(np.uint32)
    flat[np.random.default_rng(0).choice(flat.size, 200, replace=False)] ^= 1  # 200 lowest-mantissa-bit flips
    sizes = np.cumsum([np.size(v) for v in leaves])[:-1]
    flipped = [a.view(np.float32).reshape(np.shape(v)) for a, v in zip(np.split(flat, sizes), leaves, strict=True)]
    msgpack.write_bytes(flax.serialization.msgpack_serialize(jax.tree_util.tree_unflatten(treedef, flipped)))
    with pytest.raises(ModelError, match="differ from the params_sha256"):
        load_model(str(msgpack))
    # a single flipped bit too
    blob = bytearray(_saved(tmp_path, "n")[0].read_bytes())
    blob[-5] ^= 1
    (tmp_path / "n.msgpack").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="corrupt"):
        load_model(str(tmp_path / "n.msgpack"))


def test_shipped_models_carry_their_checksum():
    from dgjax.models import SHIPPED_MODELS, WEIGHTS_DIR

    for name in SHIPPED_MODELS:
        cfg = json.load(open(os.path.join(WEIGHTS_DIR, name + ".json")))
        blob = open(os.path.join(WEIGHTS_DIR, name + ".msgpack"), "rb").read()
        assert cfg["params_sha256"] == hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize("change,msg", [
    ({"arch_kwargs": {"channels": -1}}, r"arch_kwargs\['channels'\] must be an integer >= 1"),
    ({"arch_kwargs": {"channels": 0}}, r"arch_kwargs\['channels'\]"),
    ({"arch_kwargs": {"ch_mult": [[1], 2]}}, r"arch_kwargs\['ch_mult'\] must be a list"),
    ({"arch_kwargs": {"ch_mult": []}}, r"arch_kwargs\['ch_mult'\]"),
    ({"arch_kwargs": {"dropout": 1.5}}, r"arch_kwargs\['dropout'\]"),
    ({"arch_kwargs": {"bogus": 1}}, "unknown unet setting 'bogus'"),
    ({"arch_kwargs": [1, 2]}, "'arch_kwargs' must be an object"),
    ({"arch": ["unet"]}, "'arch' must be one of"),
    ({"process": "VP"}, "'process' must be a JSON object"),
])
def test_crafted_model_config_is_a_model_error(tmp_path, change, msg, capsys):
    msgpack, js = _saved(tmp_path)
    cfg = json.loads(js.read_text())
    js.write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ModelError, match=msg):
        load_model(str(msgpack))
    assert main(["align", "--model", str(msgpack), "--num", "2"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_deeply_nested_model_config_is_a_model_error(tmp_path, capsys):
    msgpack, js = _saved(tmp_path)
    js.write_text('{"arch": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ModelError, match="nested too deeply"):
        load_model(str(msgpack))
    assert main(["likelihood", "--model", str(msgpack), "--no-progress"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["zero", "fifo"])
def test_a_model_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    import time

    msgpack, _ = _saved(tmp_path)
    msgpack.unlink()
    if kind == "zero":
        os.symlink("/dev/zero", msgpack)
    else:
        os.mkfifo(msgpack)
    t = time.time()
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(str(msgpack))
    assert time.time() - t < 10


def test_a_huge_model_file_is_refused_before_reading(tmp_path):
    msgpack, _ = _saved(tmp_path)
    with open(msgpack, "r+b") as fh:
        fh.truncate(1 << 30)  # sparse: no disk used
    with pytest.raises(ModelError, match="bytes, more than"):
        load_model(str(msgpack))


def test_a_bare_shipped_name_is_the_shipped_model_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    folder = tmp_path / "digits"
    folder.mkdir()
    cfg = tiny_model_config()
    save_model(str(folder / "model"), random_params(cfg), cfg)
    monkeypatch.chdir(tmp_path)
    assert load_model("digits").config["name"] == "digits"          # shipped
    assert load_model("./digits").config["name"] == "tiny"          # the folder, by its path
    assert load_model(str(folder)).config["name"] == "tiny"


def test_an_unknown_galaxy_name_is_a_model_error():
    with pytest.raises(ModelError, match="unknown galaxy model 'galaxies-foo'"):
        load_model("galaxies-foo")


# ------------------------------------------------------------------------------------------------------
# sizes beyond memory are refused up front
# ------------------------------------------------------------------------------------------------------
def test_prior_sample_beyond_memory_is_refused_up_front():
    import time

    import dgjax as dg
    from dgjax._memory import memory_limit
    from dgjax.errors import InvalidArgument

    limit, _ = memory_limit()
    n = 2 * limit // (4 * 64) + 1  # twice the memory there is
    t = time.time()
    with pytest.raises(InvalidArgument, match=r"needs at least .* GiB of memory, more than there is"):
        dg.VP().prior_sample(jax.random.key(0), (n, 64))
    assert time.time() - t < 5
    assert dg.VP().prior_sample(jax.random.key(0), (3, 64)).shape == (3, 64)


# ------------------------------------------------------------------------------------------------------
# the command line refuses what cannot work before it starts
# ------------------------------------------------------------------------------------------------------
def _one_line_error(capsys, *needles):
    """The last stderr line is dgjax's one-line error naming ``needles`` (argparse prints its usage above)."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("dgjax") and "error:" in last, err
    assert all(n in last for n in needles), last
    return last


@pytest.mark.parametrize("command", ["demo", "sample", "train", "likelihood", "align"])
def test_cli_seed_beyond_its_range_is_refused(command, capsys):
    assert main([command, "--seed", str(2**63)]) == 2
    _one_line_error(capsys, "--seed")


def test_train_config_seed_beyond_its_range_is_refused():
    from dgjax.training import TrainConfig, train

    with pytest.raises(ValueError, match="seed: must be an int in"):
        train(TrainConfig(data="moons", arch="mlp", arch_kwargs=dict(width=8, depth=1), seed=2**63), None,
              progress=False)


@pytest.mark.parametrize("command", ["sample", "likelihood", "align"])
def test_cli_max_steps_beyond_its_range_is_refused(command, capsys):
    assert main([command, "--max-steps", "99999999999"]) == 2
    _one_line_error(capsys, "--max-steps")


@pytest.mark.parametrize("argv,needle", [(["--num", "1000000000"], "--num 1000000000"),
                                         (["--scale", "100000"], "--scale 100000")])
def test_cli_sample_sizes_beyond_memory_are_refused_before_sampling(tmp_path, argv, needle, capsys):
    import time

    t = time.time()
    assert main(["sample", "--out", str(tmp_path / "g.png"), "--no-progress"] + argv) == 2
    line = _one_line_error(capsys, needle, "GiB of memory")
    assert time.time() - t < 10, line
    assert not os.path.exists(tmp_path / "g.png")


def test_align_and_likelihood_honour_max_steps(tmp_path, capsys):
    msgpack, _ = _saved(tmp_path)
    for command in ("align", "likelihood"):  # a 2-step budget at rtol 1e-9 is spent: the typed error says so
        assert main([command, "--model", str(msgpack), "--num", "2", "--rtol", "1e-9", "--max-steps", "2",
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" not in err
        assert "max_steps = 2 steps" in err, err


def test_train_export_into_a_missing_directory_is_refused_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "moons", "--arch", "mlp", "--steps", "2", "--out", str(run),
                 "--export", "/nonexistent/dir/model", "--no-progress"]) == 2
    _one_line_error(capsys, "--export")
    assert not run.exists()


# ------------------------------------------------------------------------------------------------------
# external_score: a float compute dtype and a process object
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(dtype=np.int32), dict(dtype=bool), dict(dtype="foo"), dict(process="VP")])
def test_external_score_refuses_a_non_float_dtype_or_a_process_name(bad):
    import dgjax as dg
    from dgjax.errors import InvalidArgument

    kwargs = dict(process=dg.VP(), **bad) if "process" not in bad else dict(bad)
    process = kwargs.pop("process")
    with pytest.raises(InvalidArgument, match="dtype|process"):
        dg.external_score(lambda y, t: -y, process, **kwargs)
    assert dg.external_score(lambda y, t: -y, dg.VP(), dtype=np.float32) is not None


# ------------------------------------------------------------------------------------------------------
# training runs: a run that diverged early restarts, checksums precede checkpoints, one message on a
# failed save, a signal during the final evaluation stops it
# ------------------------------------------------------------------------------------------------------
def _toy(**over):
    from dgjax.training import TrainConfig

    base = dict(data="moons", arch="mlp", arch_kwargs=dict(width=8, depth=1), steps=2, ckpt_every=1,
                eval_every=10**6, final_eval_num=4, eval_rtol=1e-2)
    return TrainConfig(**{**base, **over})


def test_a_run_that_diverged_before_its_first_checkpoint_can_be_restarted_or_resumed(tmp_path):
    from dgjax.training import train

    run = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match="diverged"):
        train(_toy(steps=30, ckpt_every=100, lr=1e6, warmup=1, grad_clip=1e9), run, progress=False,
              final_eval=False)
    assert train(_toy(), run, progress=False, final_eval=False).state["step"] == 2   # restarted with a lower lr
    shutil.rmtree(os.path.join(run, "checkpoints"))
    assert train(_toy(lr=5e-4), run, resume=True, progress=False, final_eval=False).state["step"] == 2


def test_a_checkpoint_without_its_checksum_is_not_trusted(tmp_path):
    from dgjax.training import train

    run = tmp_path / "run"
    train(_toy(), str(run), progress=False, final_eval=False, export=False)  # load_model(run) reads the checkpoint
    (run / "checksums" / "2.sha256").unlink()
    with pytest.raises(ModelError, match="has no checksum"):
        load_model(str(run))


def test_a_failed_checkpoint_save_is_one_message(tmp_path, monkeypatch, capsys):
    import errno

    import orbax.checkpoint as ocp

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    assert main(["train", "--data", "moons", "--arch", "mlp", "--width", "8", "--depth", "1", "--steps", "2",
                 "--ckpt-every", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    _one_line_error(capsys, "saving the checkpoint of step 1", "No space left")


def test_a_signal_during_the_final_evaluation_stops_it(tmp_path, monkeypatch):
    import signal

    from dgjax.training import TrainingInterrupted, loop, train

    def evaluation_killed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return 1.0, 0.1

    monkeypatch.setattr(loop, "heldout_bits_per_dim", evaluation_killed)
    with pytest.raises(TrainingInterrupted) as info:
        train(_toy(), str(tmp_path / "run"), progress=False)
    assert info.value.signum == signal.SIGTERM and info.value.saved and info.value.step == 2
