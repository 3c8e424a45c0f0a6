"""Old location of the SDE samplers: they live in ``dgjax.sampling.sde`` now (re-exported)."""

from .sampling.sde import (BROWNIAN, SDE, NoiseWindow, NoiseWindowLogSNR, ReverseSDE, SDESampler,  # noqa: F401
                           StochasticDensityGuidance, brownian_path, noise_window, noise_window_log_snr, run_sde)
