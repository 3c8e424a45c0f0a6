"""Old location of the ODE samplers and ``dg.sample``: they live in ``dgjax.sampling`` now (re-exported)."""

from .sampling.base import AbstractSampler, Sample  # noqa: F401
from .sampling.ode import ODE, PFODE, ODESampler  # noqa: F401
from .sampling.sample import initial_logp, make_sample, sample  # noqa: F401
