"""The command line's demo (README's main job) runs and its tracked log p matches the exact one."""

import re

from dgjax.cli import main


def test_demo_prints_tracked_and_exact(capsys):
    assert main(["demo", "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "tracked log p" in out and "exact log p" in out
    err = float(re.search(r"max \|tracked - exact\| = ([0-9.e+-]+)", out).group(1))
    assert err < 1e-3


def test_help(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------
# dgjax sample / train / likelihood / align
# ------------------------------------------------------------------------------------------------------
import os  # noqa: E402

import pytest  # noqa: E402


def test_sample_writes_a_valid_png_grid_and_a_table(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["sample", "--steps", "8", "--num", "3", "--q", "0.5", "0.6", "--out", str(out), "--scale", "2",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "mean log p" in text and "digits" in text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith(("0.5 ", "0.6 "))]
    assert len(rows) == 2 and all(len(r) == 7 for r in rows)
    assert all(float(r[1]) == float(r[1]) for r in rows)   # finite numbers, not 'infeasible'
    img = Image.open(out)
    img.verify()
    w, h = Image.open(out).size   # 3 columns (samples), 2 rows (q) of 2x-scaled 8x8 images, labels left, title above
    assert w > 2 * (3 * 9 + 1) and 2 * (2 * 9 + 1) < h < 2 * (2 * 9 + 1) + 30
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]   # no temporary file left


@pytest.mark.parametrize("argv,msg", [
    (["sample", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["sample", "--out", "/no/such/dir/x.png"], "does not exist or is not writable"),
    (["sample", "--q", "1.5"], "every q must lie in \\(0, 1\\)"),
    (["likelihood", "--model", "no-such-model"], "unknown model"),
    (["align", "--t-end", "2.0"], "--t-end must lie strictly inside"),
    (["train", "--out", "/proc/dgjax-run", "--steps", "1"], "not writable"),
])
def test_bad_input_is_a_clear_error(argv, msg, capsys):
    import re

    assert main(argv + (["--no-progress"] if argv[0] != "align" else [])) == 2
    assert re.search(msg, capsys.readouterr().err)


def test_train_then_likelihood_and_align_on_a_toy_set(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--data", "moons", "--arch", "mlp", "--width", "32", "--depth", "2", "--steps", "20",
                 "--batch-size", "32", "--final-eval-num", "8", "--ckpt-every", "10", "--out", run,
                 "--no-progress"]) == 0
    assert "trained 20 steps" in capsys.readouterr().out
    assert os.path.exists(os.path.join(run, "model.msgpack"))
    assert main(["likelihood", "--model", run, "--num", "8", "--rtol", "1e-2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "continuous data, no dequantization" in out and "standard error parts" in out
    # moons is continuous: a dequantization protocol is refused, naming the fix
    assert main(["likelihood", "--model", run, "--num", "8", "--dequantization", "uniform", "--no-progress"]) == 2
    assert "use none" in capsys.readouterr().err
    assert main(["likelihood", "--model", run, "--num", "8", "--method", "sde", "--steps", "10", "--no-progress"]) == 0
    assert "forward-SDE encoder" in capsys.readouterr().out
    assert main(["likelihood", "--model", run, "--num", "8", "--method", "elbo", "--num-samples", "4",
                 "--no-progress"]) == 0
    assert "ELBO" in capsys.readouterr().out
    assert main(["align", "--model", run, "--num", "4", "--steps", "4", "--no-progress"]) == 0
    assert "aligned fraction" in capsys.readouterr().out
    # a second train into the same directory without --resume is refused
    assert main(["train", "--data", "moons", "--arch", "mlp", "--steps", "20", "--out", run, "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "train", "likelihood", "align"])
def test_every_option_has_help(command, capsys):
    from dgjax.cli import build_parser

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, f"dgjax {command} {action.option_strings} has no help text"


def test_train_objective_option(tmp_path, capsys):
    """--objective flow reaches TrainConfig (its settings are checked before anything is written); an unknown
    objective is refused by the parser."""
    out = str(tmp_path / "run")
    assert main(["train", "--objective", "flow", "--importance", "adaptive", "--steps", "1", "--out", out,
                 "--no-progress"]) == 2
    assert re.search("importance", capsys.readouterr().err) and not os.path.exists(os.path.join(out, "config.json"))
    assert main(["train", "--objective", "edm", "--out", out]) == 2
    assert "--objective" in capsys.readouterr().err


@pytest.mark.slow
def test_likelihood_protocols_on_digits(tmp_path, capsys):
    """`dgjax likelihood` on the shipped digits model: uniform (repeats) and importance (draws) dequantization,
    standard errors by source, and a checkpoint directory that a rerun resumes from to the same figure."""
    argv = ["likelihood", "--model", "digits", "--num", "4", "--batch-size", "2", "--rtol", "1e-2", "--probes", "2",
            "--no-progress"]
    assert main(argv + ["--repeats", "2", "--checkpoint-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert "uniform dequantization, 2 repeats" in first and "probe" in first
    assert main(argv + ["--repeats", "2", "--checkpoint-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split(":")[1] == first.split(":")[1]
    assert main(argv + ["--repeats", "3", "--checkpoint-dir", str(tmp_path)]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(argv + ["--dequantization", "importance", "--draws", "3"]) == 0
    assert "importance-weighted dequantization, 3 uniform draws" in capsys.readouterr().out
