"""Shared fixtures. ``x64``: run a test in float64 (``jax.enable_x64`` as a context, so other tests keep
the float32 default)."""

import jax
import pytest

import dgjax as dg

ALL_PROCESSES = [dg.VP(), dg.VPLinear(), dg.VPCosine(), dg.VE(), dg.EDM(), dg.LinearFlow()]
PROCESS_IDS = [type(p).__name__ for p in ALL_PROCESSES]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=ALL_PROCESSES, ids=PROCESS_IDS)
def process(request):
    return request.param
