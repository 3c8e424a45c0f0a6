"""Sampling: one sampler interface (``base.AbstractSampler``) shared by the ODE samplers (``ode``), density
guidance and the high-density sampler (``guidance``), the SDE samplers (``sde``), the mode-tracking ODE
(``mode``), the Brownian paths (``brownian``) and ``dg.sample`` (``sample``). Import order inside the
package: base <- brownian <- ode <- guidance <- sde <- mode <- sample."""

from .base import AbstractSampler, Cost, Sample
from .brownian import StepBrownianPath
from .guidance import (
    COEF_CAP,
    DensityGuidance,
    HighDensity,
    chi_radius,
    log_density_shift,
    prior_guidance,
    quantile_velocity,
    rate_velocity,
    typicality,
)
from .mode import ModeTracking
from .ode import ODE, PFODE, ODESampler, run_ode
from .sample import sample
from .sde import (
    BROWNIAN,
    SDE,
    ItoScheme,
    MilsteinScheme,
    NoiseWindow,
    NoiseWindowLogSNR,
    ReverseSDE,
    ReverseSDEScheme,
    SDESampler,
    StochasticDensityGuidance,
    StratonovichScheme,
    brownian_path,
    noise_window,
    noise_window_log_snr,
    run_sde,
)

__all__ = [
    "AbstractSampler", "Cost", "Sample", "StepBrownianPath",
    "COEF_CAP", "DensityGuidance", "HighDensity", "chi_radius", "log_density_shift", "prior_guidance",
    "quantile_velocity", "rate_velocity", "typicality",
    "ModeTracking",
    "ODE", "PFODE", "ODESampler", "run_ode", "sample",
    "BROWNIAN", "SDE", "NoiseWindow", "NoiseWindowLogSNR", "ReverseSDE", "SDESampler", "StochasticDensityGuidance",
    "ReverseSDEScheme", "ItoScheme", "StratonovichScheme", "MilsteinScheme", "brownian_path", "noise_window",
    "noise_window_log_snr", "run_sde",
]
