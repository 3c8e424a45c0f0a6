"""Old location of guidance: it lives in ``dgjax.sampling.guidance`` now (re-exported)."""

from .sampling.guidance import (COEF_CAP, DensityGuidance, HighDensity, chi_radius, log_density_shift,  # noqa: F401
                                prior_guidance, quantile_velocity, rate_velocity, typicality)
