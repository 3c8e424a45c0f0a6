"""dgjax: measure and control the log-density of what diffusion and flow models generate.

The specification is docs/math.md (conventions, signs, formulas); the public names are ``__all__``, documented in
docs/api/.
"""

from .alignment import Alignment, score_alignment
from .data import DATASETS, Dataset, load_dataset
from .denoising import add_noise, denoise, posterior_mean
from .divergence import DivergenceEstimator, Exact, Hutchinson, OrthogonalHutchinson, StepwiseHutchinson
from .elbo import Elbo, elbo
from .errors import (
    ArchitectureMismatch,
    DgjaxError,
    InfeasibleGuidance,
    InvalidArgument,
    LeftDataRange,
    LinearSolveFailed,
    MaxStepsReached,
    ModeBifurcation,
    ModelError,
    NonFiniteError,
    RuntimeCheckError,
)
from .evaluation import (
    DatasetLikelihood,
    Dequantization,
    ImportanceDequantization,
    StandardErrors,
    UniformDequantization,
    evaluate_likelihood,
    evaluate_log_density,
    likelihood_difference,
)
from .external import AbstractModel, ElementwiseTransform, ExternalScore, batched, external_score, log_transform
from .forward import ForwardTrack, forward_sde_logp
from .grids import GRIDS, AbstractGrid, EDMGrid, LogSNRGrid, TimesGrid, UniformGrid, step_times
from .likelihood import Likelihood, bits_per_dim, log_likelihood
from .models import SHIPPED_MODELS, TrainedModel, load_model, save_model
from .models.galaxies import GALAXY_MODELS, GalaxyModel
from .oracle import GaussianMixture, random_mixture
from .parallel import (
    batch_sharding,
    host_local_batch,
    host_slice,
    log_likelihood_sharded,
    pad_batch,
    sample_sharded,
    score_alignment_sharded,
    shard_batch,
)
from .parametrizations import score_from, score_to
from .processes import EDM, PROCESSES, VE, VP, VPSDE, CustomProcess, LinearFlow, Process, VPCosine, VPLinear
from .quantization import Quantization
from .sampling import (
    ODE,
    PFODE,
    SDE,
    DensityGuidance,
    HighDensity,
    ModeTracking,
    NoiseWindow,
    NoiseWindowLogSNR,
    ODESampler,
    ReverseSDE,
    Sample,
    SDESampler,
    StepBrownianPath,
    StochasticDensityGuidance,
    noise_window,
    noise_window_log_snr,
    prior_guidance,
    sample,
    typicality,
)
from .solve import SolveOptions
from .training import TrainConfig, train

__all__ = [
    "Alignment", "score_alignment",
    "DATASETS", "Dataset", "load_dataset",
    "ModeTracking", "add_noise", "denoise", "posterior_mean",
    "DivergenceEstimator", "Exact", "Hutchinson", "OrthogonalHutchinson", "StepwiseHutchinson",
    "Elbo", "elbo",
    "ForwardTrack", "forward_sde_logp",
    "DensityGuidance", "HighDensity", "prior_guidance", "typicality",
    "DgjaxError", "InvalidArgument", "RuntimeCheckError", "InfeasibleGuidance", "LeftDataRange", "ModeBifurcation",
    "LinearSolveFailed", "MaxStepsReached", "NonFiniteError",
    "Likelihood", "bits_per_dim", "log_likelihood",
    "DatasetLikelihood", "Dequantization", "ImportanceDequantization", "StandardErrors", "UniformDequantization",
    "evaluate_likelihood", "evaluate_log_density", "likelihood_difference", "Quantization",
    "SHIPPED_MODELS", "ArchitectureMismatch", "ModelError", "TrainedModel", "load_model", "save_model",
    "GaussianMixture", "random_mixture",
    "batch_sharding", "host_local_batch", "host_slice", "log_likelihood_sharded", "pad_batch", "sample_sharded",
    "score_alignment_sharded", "shard_batch",
    "score_from", "score_to",
    "EDM", "VE", "VP", "LinearFlow", "Process", "VPCosine", "VPLinear", "VPSDE", "CustomProcess", "PROCESSES",
    "GRIDS", "AbstractGrid", "EDMGrid", "LogSNRGrid", "TimesGrid", "UniformGrid", "step_times", "SolveOptions",
    "AbstractModel", "ExternalScore", "ElementwiseTransform", "batched", "external_score", "log_transform",
    "GALAXY_MODELS", "GalaxyModel",
    "ODE", "PFODE", "ODESampler", "Sample", "sample",
    "SDE", "NoiseWindow", "NoiseWindowLogSNR", "ReverseSDE", "SDESampler", "StepBrownianPath",
    "StochasticDensityGuidance", "noise_window", "noise_window_log_snr",
    "TrainConfig", "train",
]
__version__ = "0.1.0"
