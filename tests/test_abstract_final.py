"""equinox's abstract/final pattern (issue 23, item 2): every base class is abstract (abstract methods and
``AbstractVar`` declarations, no fields, no ``raise NotImplementedError``), and what ``dg.sample`` and the
sharding layer need from a sampler is declared on its base: a new sampler defined here, with a per-sample
parameter and a data range, is sharded and range-checked with no change to sample.py or parallel.py."""

import ast
import dataclasses
import importlib
import inspect
import os
import pathlib
import pkgutil
import subprocess
import sys
import textwrap

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgjax as dg
from dgjax.sampling.sde import ItoScheme, MilsteinScheme, ReverseSDEScheme, StratonovichScheme

ROOT = pathlib.Path(dg.__file__).parent
VP = dg.VP()


def _raises_not_implemented(fn: ast.AST) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


def test_no_base_class_raises_not_implemented_error():
    """Read from the source with ast: no method of a class that another dgjax class subclasses raises
    NotImplementedError (an abstract method is declared with abc.abstractmethod instead)."""
    classes = {}  # name -> (file, ClassDef)
    bases = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = (path, node)
                bases |= {b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                          if isinstance(b, (ast.Name, ast.Attribute))}
    subclassed = sorted(bases & classes.keys())
    assert {"AbstractSampler", "ODESampler", "SDESampler", "Process", "DivergenceEstimator"} <= set(subclassed)
    offenders = [f"{classes[n][0].relative_to(ROOT)}: {n}.{f.name}" for n in subclassed
                 for f in classes[n][1].body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and _raises_not_implemented(f)]
    assert not offenders, offenders
    # the scan itself finds the pattern it looks for
    bad = ast.parse("class B:\n    def f(self):\n        raise NotImplementedError('x')\n").body[0].body[0]
    assert _raises_not_implemented(bad)


def _dgjax_modules():
    for info in pkgutil.walk_packages([str(ROOT)], "dgjax."):
        if info.name.startswith("dgjax.cli"):
            continue
        yield importlib.import_module(info.name)


def test_every_subclassed_module_is_abstract_without_fields():
    """Every equinox Module of dgjax that dgjax subclasses is abstract (cannot be instantiated) and declares no
    dataclass fields: fields live on the final classes only (AbstractVar declares what a base needs)."""
    mods = {cls for m in _dgjax_modules() for _, cls in inspect.getmembers(m, inspect.isclass)
            if issubclass(cls, eqx.Module) and cls.__module__.startswith("dgjax.")}
    bases = {b for cls in mods for b in cls.__mro__[1:] if b in mods}
    assert {dg.ODESampler, dg.SDESampler, dg.Process, dg.DivergenceEstimator, ReverseSDEScheme} <= bases
    for base in bases:
        assert dataclasses.fields(base) == (), (base, dataclasses.fields(base))
        abstract = (inspect.isabstract(base) or base.__abstractvars__ or base.__abstractclassvars__)
        assert abstract, f"{base.__name__} is subclassed but not abstract"
    for final in mods - bases:
        assert not inspect.isabstract(final) and not final.__abstractvars__, final


def test_reverse_sde_schemes_are_classes_and_strings_are_shorthands():
    for name, cls in (("ito", ItoScheme), ("stratonovich", StratonovichScheme), ("milstein", MilsteinScheme)):
        assert dg.ReverseSDE(scheme=name).scheme == cls() == dg.ReverseSDE(scheme=cls()).scheme
    assert isinstance(dg.ReverseSDE().scheme, ItoScheme)
    # the solver kind is diffrax's own type: a solver of the other kind is refused, naming the kind
    with pytest.raises(ValueError, match="AbstractItoSolver"):
        dg.ReverseSDE(scheme="milstein").check_solver(dfx.Heun())
    with pytest.raises(ValueError, match="AbstractStratonovichSolver"):
        dg.ReverseSDE(scheme="stratonovich").check_solver(dfx.Euler())
    with pytest.raises(ValueError, match="supports diffrax.Euler"):  # Ito kind, but needs separate terms
        dg.ReverseSDE().check_solver(dfx.ItoMilstein())
    assert isinstance(dg.ReverseSDE(scheme="stratonovich").default_solver(), dfx.AbstractStratonovichSolver)
    for cls in (ItoScheme, StratonovichScheme, MilsteinScheme):
        assert all(issubclass(s, cls.solver_kind) for s in cls.solvers)


class _Clipped(dg.ODESampler):
    """The PF-ODE, range-checked against a fixed bound (a new sampler declaring a data range)."""

    bound: float = eqx.field(static=True)
    needs_divergence = False

    def phases(self, process, t_start, t_end):
        return [(t_start, t_end, lambda coeffs, x, s, **_: dg.dynamics.pf_drift(coeffs, x, s))]

    def checked_range(self):
        return self.bound


def test_a_new_sampler_declaring_a_data_range_is_checked_by_dg_sample():
    gm = dg.random_mixture(jax.random.key(0), 2, (3,), mean_scale=2.0)
    x_T = VP.prior_sample(jax.random.key(1), (16, 3))
    ref = dg.sample(gm.score(VP), VP, x_T, steps=8)
    r = float(jnp.max(jnp.abs(ref.x)))
    out = dg.sample(gm.score(VP), VP, x_T, sampler=_Clipped(r), steps=8)  # inside: unchanged
    np.testing.assert_array_equal(out.x, ref.x)
    with pytest.raises((ValueError, dg.DgjaxError), match="left the data range"):
        dg.sample(gm.score(VP), VP, x_T, sampler=_Clipped(0.2 * r), steps=8)


# A sampler the library has never seen: the PF-ODE with a per-sample score weight c_i (N,). Sharded over 4
# devices with an uneven batch (padding), its result must equal plain dg.sample on one device row by row.
NEW_SAMPLER = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import equinox as eqx
    import dgjax as dg
    from dgjax.parallel import _pad_sampler
    assert len(jax.devices()) == 4, jax.devices()

    class WeightedPFODE(dg.ODESampler):
        c: jax.Array            # (N,): per-sample weight of the score, dx/dt = f x - 1/2 g^2 c_i s
        needs_divergence = False

        def phases(self, process, t_start, t_end):
            def velocity(coeffs, x, s, **_):
                _, _, f, g2 = coeffs
                return f * x - 0.5 * g2 * self.c.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype) * s
            return [(t_start, t_end, velocity)]

        def per_sample(self):
            return (self.c,)

    P = dg.VP()
    gm = dg.random_mixture(jax.random.key(0), 3, (8,))
    score = gm.score(P)
    for n, pad in ((8, False), (6, True)):
        x_T = P.prior_sample(jax.random.key(1), (n, 8))
        sampler = WeightedPFODE(jnp.linspace(0.5, 1.5, n))
        kw = dict(key=jax.random.key(2), steps=12, track_logp=True)
        ref = dg.sample(score, P, x_T, sampler=sampler, **kw)
        out = dg.sample_sharded(score, P, x_T, sampler=sampler, pad=pad, **kw)
        assert out.x.shape == ref.x.shape and len(out.x.sharding.device_set) == 4
        np.testing.assert_allclose(out.x, ref.x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.logp, ref.logp, rtol=1e-5, atol=1e-4)
        # the weights matter (a sampler that ignored c, or took another row's c, would differ)
        plain = dg.sample(score, P, x_T, **kw)
        assert float(jnp.max(jnp.abs(plain.x - ref.x))) > 1e-2
        # the per-sample parameter travels padded and sharded with the batch
        n_pad = -(-n // 4) * 4
        padded = _pad_sampler(sampler, n, n_pad, None)
        assert padded.c.shape == (n_pad,) and len(padded.c.sharding.device_set) == 4
        np.testing.assert_array_equal(padded.c[:n], sampler.c)
    print("OK")
""")


def test_a_new_sampler_with_a_per_sample_parameter_is_sharded_over_four_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", NEW_SAMPLER], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
