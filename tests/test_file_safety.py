"""Files dgjax writes and reads: no write through a planted link, no unbounded or blocking read, model
files checked (dtypes, checksum, config) before use (issue 24: items 8 and 9 and the file items)."""

import os

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
