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
