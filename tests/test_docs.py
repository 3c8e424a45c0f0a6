"""The documentation site (docs/, mkdocs.yml) and README.md: the API reference lists every public name, the
math page's formula-function index names functions that exist, the command-line page is generated from the
argument parser, and every Python code block of README.md and the docs' Markdown pages runs.

Code blocks: every ```python block of a page runs, in order, in one namespace, in a fresh process (so one
page's ``jax.config`` cannot leak into another's). A block right after ``<!-- illustrative -->`` is never run
(it needs a cluster, a GPU or data that is not there); a block right after ``<!-- slow -->`` runs only in the
slow, full-size test. The size knob: in the default (fast) test a line ``NAME = VALUE  # test: SMALL`` runs as
``NAME = SMALL``; the slow test runs every block at the size written.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dgjax

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
KNOB = re.compile(r"^(\s*)([\w.\[\], ]+?)\s*=\s*(.+?)\s*#\s*test:\s*(.+?)\s*$")
MARKERS = ("<!-- illustrative -->", "<!-- slow -->")


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def code_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(first line number, code, marker) of every ```python block; marker "" / "illustrative" / "slow"."""
    lines = path.read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if lang == "python":
            prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            marker = prev[5:-4].strip() if prev in MARKERS else ""
            body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
            blocks.append((i + 2, "\n".join(body), marker))
        i = j + 1
    return blocks


def shrink(code: str) -> str:
    """Apply the size knob: ``x = BIG  # test: SMALL`` -> ``x = SMALL``."""
    return "\n".join(KNOB.sub(lambda m: f"{m.group(1)}{m.group(2)} = {m.group(4)}", ln) for ln in code.split("\n"))


def page_script(path: Path, full: bool) -> str | None:
    """One script that runs the page's blocks in order; None when the page has nothing to run."""
    run = [(line, code) for line, code, marker in code_blocks(path)
           if marker != "illustrative" and (full or marker != "slow")]
    if not run:
        return None
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    parts = ["ns = {'__name__': '__main__'}"]
    for line, code in run:
        code = code if full else shrink(code)
        parts.append(f"exec(compile({code!r}, {f'{rel}:{line}'!r}, 'exec'), ns)")
    return "\n".join(parts)


def runnable_pages(full: bool) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in markdown_pages() if page_script(p, full) is not None]


def run_page(rel: str, full: bool, tmp_path: Path, timeout: int) -> None:
    script = page_script(ROOT / rel, full)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg", DGJAX_DOCS_ROOT=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"a code block of {rel} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.parametrize("rel", runnable_pages(full=False))
def test_code_blocks_run(rel, tmp_path):
    run_page(rel, full=False, tmp_path=tmp_path, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("rel", runnable_pages(full=True))
def test_code_blocks_run_full_size(rel, tmp_path):
    run_page(rel, full=True, tmp_path=tmp_path, timeout=3600)


def test_code_block_parser(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```python\na = 1\n```\n\n<!-- illustrative -->\n```python\nraise SystemExit(1)\n```\n"
                    "- item\n\n  <!-- slow -->\n  ```python\n  n = 1000  # test: 4\n  ```\n```bash\nls\n```\n")
    blocks = code_blocks(page)
    assert [(m, c) for _, c, m in blocks] == [("", "a = 1"), ("illustrative", "raise SystemExit(1)"),
                                               ("slow", "n = 1000  # test: 4")]
    assert shrink(blocks[2][1]) == "n = 4"
    assert "raise SystemExit" not in page_script(page, full=True)
    assert "n = 1000" in page_script(page, full=True) and "n = 1000" not in (page_script(page, full=False) or "")


def test_readme_is_short_and_links_into_the_site():
    text = (ROOT / "README.md").read_text()
    assert len(text.split("\n")) <= 150
    assert ".venv/bin/dgjax sample" in text and ".venv/bin/python -m pytest" in text and "mkdocs serve" in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def api_entries() -> list[str]:
    """The dotted paths of every ``::: PATH`` entry on the API pages."""
    entries = []
    for page in (DOCS / "api").glob("*.md"):
        entries += re.findall(r"^::: (dgjax(?:\.\w+)+)\s*$", page.read_text(), flags=re.M)
    return entries


def test_api_reference_lists_every_public_name():
    """Each name of dgjax.__all__ has an entry (``::: dgjax.NAME``, or its defining module's path where a
    submodule of the same name would shadow it for mkdocstrings, e.g. dgjax.elbo.elbo), and every entry is
    the public object itself."""
    documented = {}
    for path in api_entries():
        name = path.rsplit(".", 1)[1]
        assert name in dgjax.__all__, f"docs/api/ documents {path}, which is not in dgjax.__all__"
        assert resolve(path) is getattr(dgjax, name), f"docs/api/: {path} is not dgjax.{name}"
        assert name not in documented, f"docs/api/ documents dgjax.{name} twice ({documented[name]}, {path})"
        documented[name] = path
    missing = sorted(set(dgjax.__all__) - set(documented))
    assert not missing, f"add a '::: dgjax.NAME' line to a page of docs/api/ for each of {missing}"


def resolve(name: str):
    """Import a dotted name: ``dgjax.mod.func``, ``dgjax.mod.Class.method`` or a top-level ``Name[.attr]``."""
    parts = name.split(".")
    if parts[0] != "dgjax":
        parts = ["dgjax", *parts]
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def test_math_index_names_resolve():
    text = (DOCS / "math.md").read_text()
    index = text[text.index("## Formula-function index"):]
    names = set()
    for row in index.split("\n"):
        if row.startswith("| (") and row.count("|") >= 4:
            names |= set(re.findall(r"`([A-Za-z_][\w.]*)`", row.split("|")[3]))
    names |= set(re.findall(r"`(dgjax(?:\.\w+)+)`", text))
    assert len(names) > 30
    bad = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            bad.append(name)
    assert not bad, f"docs/math.md names functions that do not exist: {bad}"


def test_math_sections_are_numbered_one_to_ten():
    headings = re.findall(r"^## (\d+)\. .*\{ #sec-(\d+) \}$", (DOCS / "math.md").read_text(), flags=re.M)
    assert [(int(a), int(b)) for a, b in headings] == [(k, k) for k in range(1, 11)]


def test_cli_page_is_generated_from_the_parser():
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        from cli_help import MARKER, cli_help_markdown
    finally:
        sys.path.pop(0)
    assert MARKER in (DOCS / "cli.md").read_text()
    text = cli_help_markdown()
    from dgjax.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) >= {"demo", "train", "sample", "likelihood", "align"}
    for name, p in sub.choices.items():
        assert f"## `dgjax {name}`" in text
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in text, f"dgjax {name} {opt} missing from the generated page"


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = sorted(p for p in pages if p not in config)
    assert not missing, f"add these pages to mkdocs.yml's nav: {missing}"


def test_tutorials_are_python_that_parses():
    blocks = [c for p in (DOCS / "tutorials").glob("*.md") for _, c, _ in code_blocks(p)]
    assert len(blocks) >= 10
    for code in blocks:
        ast.parse(code)


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert (tmp_path / "site" / "api" / "sampling" / "index.html").exists()


def test_no_file_refers_to_the_external_specification():
    """The mathematics lives in docs/math.md and the public names in dgjax.__all__ / docs/api/: no file of the
    repository may point at the specification files that are not in it. A grep over every file, skipping only
    .git, .venv and git-ignored output (caches, *.egg-info, site/, results/, runs/), whose stale copies are not the
    repository's."""
    spec, names = "MATH" + ".md", "API" + ".md"
    short = re.compile(rb"\bMATH [0-9]")  # the old short form: MATH, a space, a section number
    skip = {".git", ".venv", "__pycache__", "site", ".pytest_cache", ".hypothesis", ".ruff_cache", "results", "runs",
            "build", "dist"}
    bad = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            data = path.read_bytes()
            if spec.encode() in data or names.encode() in data or short.search(data):
                bad.append(path.relative_to(ROOT).as_posix())
    assert not bad, f"these files refer to {spec}, {names} or 'MATH N' (use docs/math.md, docs/api/): {bad}"
