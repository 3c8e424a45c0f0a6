"""Bad input gets a clear error naming the argument, never a silent NaN; every failure has its type
(``dgjax.errors``), eagerly, under the user's ``jax.jit`` and sharded over several devices; no module
classifies an exception by its text."""

import ast
import os
import pathlib
import re
import subprocess
import sys
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import dgjax as dg

P = dg.VP()
GM = dg.random_mixture(jax.random.key(0), 2, (3,))
SCORE = GM.score(P)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match="score"):
        dg.sample(SCORE, P, jnp.zeros((4, 5)), steps=2)
    with pytest.raises(ValueError, match="score"):
        dg.sample(lambda x, t: x[:, :2], P, jnp.zeros((4, 3)), steps=2)
    with pytest.raises(ValueError, match="x_T"):
        dg.sample(SCORE, P, jnp.float32(1.0), steps=2)
    with pytest.raises(ValueError, match="logp_T"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), key=jax.random.key(0), track_logp=True, logp_T=jnp.zeros(3), steps=2)
    with pytest.raises(ValueError, match="drift"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), sampler=dg.ODE(lambda x, t, s: s[:, :1]), steps=2)
    with pytest.raises(ValueError, match="dtype"):
        dg.sample(lambda x, t: x.astype(jnp.float16), P, jnp.zeros((4, 3)), steps=2)


def test_time_outside_range():
    with pytest.raises(ValueError, match="t_start"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), t_start=1.5, steps=2)
    with pytest.raises(ValueError, match="t_end"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), t_end=-0.1, steps=2)
    with pytest.raises(ValueError, match="t_end"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), t_start=0.3, t_end=0.5, steps=2)


def test_non_finite_x_T_eager_and_under_jit():
    bad = jnp.zeros((4, 3)).at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match="x_T.*non-finite"):
        dg.sample(SCORE, P, bad, steps=2)
    f = jax.jit(lambda x: dg.sample(SCORE, P, x, steps=2).x)
    with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError), match="x_T.*non-finite"):
        jax.block_until_ready(f(bad))
    with pytest.raises(ValueError, match="x0.*non-finite"):
        dg.log_likelihood(SCORE, P, jnp.full((2, 3), jnp.inf), divergence=dg.Exact(), steps=2)


def test_missing_key_for_hutchinson():
    with pytest.raises(ValueError, match="key"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), track_logp=True, steps=2)


def test_bad_sampler_and_params():
    with pytest.raises(ValueError, match="sampler"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), sampler="pf", steps=2)
    with pytest.raises(ValueError, match="num_probes"):
        dg.Hutchinson(num_probes=0)
    with pytest.raises(ValueError, match="parametrization"):
        dg.score_from(SCORE, P, "epsilon")
    with pytest.raises(ValueError, match="steps"):
        dg.sample(SCORE, P, jnp.zeros((4, 3)), steps=10, rtol=1e-3)
    with pytest.raises(ValueError, match="x_T.*floating"):
        dg.sample(SCORE, P, jnp.zeros((4, 3), jnp.int32), steps=2)


# ------------------------------------------------------------------------------------------------------
# no module classifies an exception by its text (issue 23, item 1): only dgjax/errors.py reads messages
# ------------------------------------------------------------------------------------------------------
_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TEXT_CALLS = {"str", "repr", "format"}
_STRING_TESTS = {"startswith", "endswith", "find", "rfind", "index", "count", "search", "match", "fullmatch",
                 "findall"}


def _exception_names(tree) -> set[str]:
    """Names bound to exceptions: ``except ... as NAME`` and parameters annotated ``Exception``/``*Error``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            ann = ast.unparse(node.annotation)
            if "Exception" in ann or "Error" in ann:
                names.add(node.arg)
    return names


def _text_of(node, excs: set[str]) -> bool:
    """``node`` contains the text of an exception: str(e), repr(e), f"{e}", e.args, or a name assigned one."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in _TEXT_CALLS:
            if any(isinstance(a, ast.Name) and a.id in excs for a in sub.args):
                return True
        if isinstance(sub, ast.Attribute) and sub.attr in ("args", "message") and isinstance(sub.value, ast.Name) \
                and sub.value.id in excs:
            return True
        if isinstance(sub, ast.FormattedValue) and isinstance(sub.value, ast.Name) and sub.value.id in excs:
            return True
    return False


def text_classifications(source: str) -> list[str]:
    """Where ``source`` decides something from an exception's text or class name: a comparison (``in``,
    ``==``, ...) or a string test (startswith, re.search, ...) on str(e) / e.args / a name holding it, any
    use of ``e.args``, or a comparison of a ``__name__``."""
    tree = ast.parse(source)
    excs = _exception_names(tree)
    texts: set[str] = set()  # names assigned an exception's text (msg = str(e)), also through chains
    for _ in range(3):
        texts |= {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _text_of(node.value, excs | texts)
                  for t in node.targets if isinstance(t, ast.Name)}
    holds_text = lambda n: _text_of(n, excs | texts) or any(  # noqa: E731
        isinstance(s, ast.Name) and s.id in texts for s in ast.walk(n))
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)[:80]}"
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(holds_text(s) for s in sides) or any(
                    isinstance(s, ast.Attribute) and s.attr == "__name__" for side in sides for s in ast.walk(side)):
                found.append(where)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _STRING_TESTS:
            if holds_text(node.func.value) or any(holds_text(a) for a in node.args):
                found.append(where)
        elif isinstance(node, ast.Attribute) and node.attr == "args" and isinstance(node.value, ast.Name) \
                and node.value.id in excs:
            found.append(where)
    return found


def test_the_text_classifier_finds_what_it_should():
    # planted: every way the code base once classified an error (issue 23's list) is found
    planted = [
        'try:\n    f()\nexcept Exception as e:\n    if "max_steps" in str(e):\n        pass\n',
        'def _stopped(e: Exception) -> bool:\n    return "bifurcates" in str(e) or "conjugate" in str(e)\n',
        'try:\n    f()\nexcept Exception as e:\n    ok = any(c.__name__ in ("XlaRuntimeError",) for c in '
        'type(e).__mro__)\n',
        'try:\n    f()\nexcept ValueError as err:\n    if err.args[0] == "x":\n        pass\n',
        'try:\n    f()\nexcept Exception as e:\n    text = str(e)\n    if text.startswith("boom"):\n        pass\n',
        'try:\n    f()\nexcept Exception as e:\n    msg = "CG" if "conjugate" in str(e) else "H"\n',
        'try:\n    f()\nexcept Exception as e:\n    bad = re.search("left the data", str(e))\n',
        'try:\n    f()\nexcept Exception as e:\n    bad = type(e).__name__ == "EquinoxRuntimeError"\n',
        'try:\n    f()\nexcept Exception as e:\n    bad = f"{e}" == "x"\n',
    ]
    for src in planted:
        assert text_classifications(src), src
    # legitimate: printing or re-raising a message is no classification
    legit = [
        'try:\n    f()\nexcept ValueError as e:\n    return _fail(str(e))\n',
        'try:\n    f()\nexcept Exception as e:\n    msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else '
        'type(e).__name__\n    print(msg)\n',
        'if __name__ == "__main__":\n    main()\n',
        'try:\n    f()\nexcept KeyError as e:\n    raise ModelError(f"missing {e}") from e\n',
    ]
    for src in legit:
        assert not text_classifications(src), src


def test_no_module_classifies_an_exception_by_its_text():
    files = [p for d in ("dgjax", "scripts", "benchmarks") for p in sorted((_ROOT / d).rglob("*.py"))]
    assert len(files) > 30
    found = {str(p.relative_to(_ROOT)): hits for p in files if p != _ROOT / "dgjax" / "errors.py"
             for hits in [text_classifications(p.read_text())] if hits}
    assert not found, f"classify errors by type (dgjax.errors), not by their text: {found}"


# ------------------------------------------------------------------------------------------------------
# every typed run-time error: eager, under the user's jax.jit, sharded over 4 devices
# ------------------------------------------------------------------------------------------------------
_MIX = dg.random_mixture(jax.random.key(30), 3, (2,))
_MIX4 = dg.random_mixture(jax.random.key(0), 2, (4,))
_SYM = dg.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]]), jnp.array([0.01, 0.01]))
_X = P.prior_sample(jax.random.key(31), (4, 2))


def nan_past(score, t_star: float, below: bool = True):
    """``score`` that returns NaN for t < t_star (``below``) or t > t_star: a model that breaks partway
    through a solve."""
    def bad(x, t):
        t = jnp.asarray(t)
        return jnp.where(t < t_star if below else t > t_star, jnp.nan, 1.0) * score(x, t)
    return bad


# name -> (error class, function of the (4, 2) batch that raises it); tiny problems on the oracle
CASES = {
    "infeasible": (dg.InfeasibleGuidance, lambda x: dg.sample(
        _MIX.score(P), P, x, sampler=dg.DensityGuidance(0.9), steps=20, solver=diffrax.Euler()).x),
    "data_range": (dg.LeftDataRange, lambda x: dg.sample(
        _MIX.score(P), P, x, sampler=dg.DensityGuidance(0.5, data_range=0.05), steps=4).x),
    "bifurcation": (dg.ModeBifurcation, lambda x: dg.denoise(
        _SYM.score(P), P, 0.0 * x, 0.5, method="mode", divergence=dg.Exact(), steps=20).x),
    "linear_solve": (dg.LinearSolveFailed, lambda x: dg.sample(  # one CG step on a 4-D anisotropic Hessian
        _MIX4.score(P), P, jnp.concatenate([x, x], axis=1), sampler=dg.ModeTracking(cg_steps=1, cg_tol=1e-6,
                                                                                      check="curvature"),
        t_start=0.5, t_end=0.1, steps=4, divergence=dg.Exact()).x),
    "max_steps": (dg.MaxStepsReached, lambda x: dg.sample(_MIX.score(P), P, x, max_steps=3).x),
    "non_finite": (dg.NonFiniteError, lambda x: dg.sample(nan_past(_MIX.score(P), 0.5), P, x).x),
    "traced_argument": (dg.InvalidArgument, lambda x: dg.sample(
        _MIX.score(P), P, x, t_start=jnp.max(x) * 0 + 1.5, steps=2).x),
}


# mode tracking compiles HVP and Krylov loops: its cases run in the slow suite (and sharded below)
_NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in ("bifurcation", "linear_solve") else n for n in sorted(CASES)]


@pytest.mark.parametrize("name", _NAMES)
def test_typed_error_eager(name):
    cls, fn = CASES[name]
    with pytest.raises(cls):
        jax.block_until_ready(fn(_X))


@pytest.mark.parametrize("name", _NAMES)
def test_typed_error_under_the_users_jit(name):
    cls, fn = CASES[name]
    with pytest.raises(cls), dg.errors.typed_errors():
        jax.block_until_ready(jax.jit(fn)(_X))


def test_typed_error_under_filter_jit_has_one_clean_message():
    # equinox.filter_jit prefixes "Above is the stack outside of JIT" and frames: the typed error drops them
    with pytest.raises(dg.MaxStepsReached) as info, dg.errors.typed_errors():
        jax.block_until_ready(eqx.filter_jit(CASES["max_steps"][1])(_X))
    assert str(info.value).startswith("the adaptive solve") and "Above is the stack" not in str(info.value)


def test_cli_prints_one_line_for_a_typed_error(capsys):
    from dgjax.cli import main

    # float32 cannot hold rtol = 1e-300: the PID error norm would be 0/0 and every step rejected
    assert main(["demo", "--rtol", "1e-300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dgjax: error: rtol: 1e-300 underflows to 0 in float32"), err


def test_classify_leaves_other_errors_alone():
    assert isinstance(dg.errors.classify(ValueError("x")), ValueError)
    err = KeyError("k")
    assert dg.errors.classify(err) is err
    typed = dg.errors.classify(eqx.EquinoxRuntimeError(dg.errors.tagged(dg.LeftDataRange, "left")))
    assert type(typed) is dg.LeftDataRange and str(typed) == "left"
    assert issubclass(dg.NonFiniteError, FloatingPointError) and issubclass(dg.InvalidArgument, ValueError)


_SHARDED = """
import os, sys, time
sys.path.insert(0, {tests!r})
import jax
import dgjax as dg
import test_errors as T
assert len(jax.devices()) == 4
for name in sys.argv[1:]:
    cls, fn = T.CASES[name]
    x = dg.shard_batch(T._X)
    start = time.perf_counter()
    try:
        with dg.errors.typed_errors():
            jax.block_until_ready(jax.jit(fn)(x))
        print(name, "jit", "no error", flush=True)
    except Exception as e:
        print(name, "jit", type(e).__name__, round(time.perf_counter() - start, 1), flush=True)
    if name in ("infeasible", "data_range", "max_steps", "non_finite"):  # dg.sample's sharded entry point
        kw = dict(infeasible=dict(sampler=dg.DensityGuidance(0.9), steps=20, solver=T.diffrax.Euler()),
                  data_range=dict(sampler=dg.DensityGuidance(0.5, data_range=0.05), steps=4),
                  max_steps=dict(max_steps=3), non_finite=dict())[name]
        score = T.nan_past(T._MIX.score(T.P), 0.5) if name == "non_finite" else T._MIX.score(T.P)
        start = time.perf_counter()
        try:
            dg.sample_sharded(score, T.P, T._X, **kw)
            print(name, "sharded", "no error", flush=True)
        except Exception as e:
            print(name, "sharded", type(e).__name__, round(time.perf_counter() - start, 1), flush=True)
"""


def _run_on_4_devices(names, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
    code = _SHARDED.format(tests=str(_ROOT / "tests"))
    out = subprocess.run([sys.executable, "-c", code, *names], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, (out.stdout, out.stderr[-3000:])  # no SIGABRT (issue 24, item 7)
    rows = [line.split() for line in out.stdout.splitlines()]
    return {(r[0], r[1]): (r[2], float(r[3]) if len(r) > 3 else None) for r in rows}


def _check_sharded(names):
    got = _run_on_4_devices(names)
    for name in names:
        routes = [k for k in got if k[0] == name]
        assert routes, (name, got)
        for key in routes:  # (the seconds, compilation included, are in the message on failure)
            assert got[key][0] == CASES[name][0].__name__, (key, got[key])


def test_sharded_jit_raises_typed_errors_at_once():
    """Issue 24, item 7: jax.jit over a dg.shard_batch-ed batch raised nothing and aborted (SIGABRT) after
    ~60 s when infeasible guidance or a mode bifurcation was detected; now the typed error, on every route."""
    _check_sharded(["infeasible", "bifurcation"])


@pytest.mark.slow
def test_sharded_jit_raises_every_typed_error():
    _check_sharded(sorted(set(CASES) - {"infeasible", "bifurcation"}))


def test_one_device_sample_sharded_raises_the_typed_error():
    with pytest.raises(dg.InfeasibleGuidance):
        dg.sample_sharded(_MIX.score(P), P, _X, devices=jax.devices()[:1], sampler=dg.DensityGuidance(0.9),
                          steps=20, solver=diffrax.Euler())


# ------------------------------------------------------------------------------------------------------
# issue 24, item 6: an adaptive solve whose score turns NaN stops at once, naming the cause and the time
# ------------------------------------------------------------------------------------------------------
def _counting(score):
    calls = []

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return score(x, t)

    return counted, calls


@pytest.mark.parametrize("entry", ["sample", "log_likelihood"])
def test_nan_score_stops_the_adaptive_solve_at_once(entry):
    # the sample runs from t = 1 down, the likelihood from t = 0 up: the score fails beyond t = 0.5 either way
    score, calls = _counting(nan_past(_MIX.score(P), 0.5, below=entry == "sample"))
    start = time.perf_counter()
    with pytest.raises(dg.NonFiniteError, match=r"first non-finite step.*t = 0\.[45]\d* after \d+ steps") as info:
        if entry == "sample":
            dg.sample(score, P, _X)
        else:
            dg.log_likelihood(score, P, _X, divergence=dg.Exact())
    steps = int(re.search(r"after (\d+) steps", str(info.value)).group(1))
    jax.effects_barrier()
    # before: every step rejected with a NaN step size until max_steps = 16384 (then "max_steps" blamed)
    assert steps < 100 and len(calls) < 1000, (steps, len(calls))
    assert time.perf_counter() - start < 60
