"""Repeated calls reuse the compiled solve when the score is a pytree (a model, a mixture's score, an equinox
module), and never reuse one that could have frozen a caller's changing arrays (a plain function is traced
anew at every call, as ``jax.jit`` of a new function would be)."""

import jax
import numpy as np
import pytest
from jax import monitoring

import dgjax as dg

VP = dg.VP()
_EVENTS: list[str] = []
monitoring.register_event_duration_secs_listener(
    lambda name, _dur, **_kw: _EVENTS.append(name) if name.endswith("backend_compile_duration") else None)


def _compiles(fn) -> tuple[int, object]:
    """(XLA compilations during ``fn()``, its result)."""
    n = len(_EVENTS)
    out = jax.block_until_ready(fn())
    return len(_EVENTS) - n, out


CALLS = {
    "pfode-tracked": lambda s, x: dg.sample(s, VP, x, key=jax.random.key(2), track_logp=True).logp,
    "density-guidance": lambda s, x: dg.sample(s, VP, x, sampler=dg.DensityGuidance(0.52), key=jax.random.key(2),
                                               track_logp=True, steps=8).logp,
    "reverse-sde": lambda s, x: dg.sample(s, VP, x, sampler=dg.ReverseSDE(), key=jax.random.key(2),
                                          track_logp=True, steps=8).logp,
    "log-likelihood": lambda s, x: dg.log_likelihood(s, VP, x, key=jax.random.key(2)).logp,
    "forward-sde": lambda s, x: dg.forward_sde_logp(s, VP, x, key=jax.random.key(2), steps=16).change,
    "alignment": lambda s, x: dg.score_alignment(s, VP, x, 0.5),
    "alignment-score-free": lambda s, x: dg.score_alignment(s, VP, x, 0.5, score_free=True, key=jax.random.key(2),
                                                            steps=16),
}


@pytest.mark.parametrize("call", list(CALLS), ids=str)
def test_a_pytree_score_compiles_once_and_sees_new_arrays(call):
    fn = CALLS[call]
    mix = dg.random_mixture(jax.random.key(0), 3, (4,))
    x = VP.prior_sample(jax.random.key(1), (6, 4))
    first, _ = _compiles(lambda: fn(mix.score(VP), x))
    assert first > 0
    again, out = _compiles(lambda: fn(mix.score(VP), x))
    assert again == 0, f"{again} compilations on the second call"
    # another mixture of the same shapes: the same program, its own arrays (not the first mixture's constants)
    other = dg.random_mixture(jax.random.key(7), 3, (4,))
    n, out_other = _compiles(lambda: fn(other.score(VP), x))
    assert n == 0
    s_other = other.score(VP)
    np.testing.assert_allclose(out_other, fn(lambda z, t: s_other(z, t), x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out_other, out)


def test_a_plain_function_is_traced_anew_so_the_arrays_it_reads_are_current():
    mix = dg.random_mixture(jax.random.key(0), 3, (4,))
    x = VP.prior_sample(jax.random.key(1), (6, 4))
    state = {"score": mix.score(VP)}
    score = lambda z, t: state["score"](z, t)  # noqa: E731 -- reads the caller's state at every call
    fn = CALLS["pfode-tracked"]
    before = fn(score, x)
    state["score"] = dg.random_mixture(jax.random.key(7), 3, (4,)).score(VP)
    after = fn(score, x)
    np.testing.assert_allclose(after, fn(state["score"], x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(before, after)


def test_retrace_token():
    from dgjax.solve import retrace_token

    mix = dg.random_mixture(jax.random.key(0), 2, (2,))
    assert retrace_token(mix.score(VP)) is None and retrace_token(dg.load_model("digits").score) is None
    assert retrace_token(lambda z, t: -z) is not None
    assert retrace_token(dg.ODE(lambda x, t, s: s)) is not None  # a caller's drift: traced anew too
    assert retrace_token(lambda z, t: -z) != retrace_token(lambda z, t: -z)
