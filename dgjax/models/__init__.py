"""Score networks, trained models, model files and the models shipped with dgjax (the models layer).

``networks`` (the Flax MLP / UNet conditioned on the log-SNR, ``ModelError``) <- ``trained``
(``TrainedModel``: a network bound to its parameters, process and config) <- ``checkpoints`` (a training
run's orbax checkpoints; ``load_run``) <- ``galaxies`` (galaxygrad's pretrained galaxy models) <- ``files``
(``NAME.msgpack`` + ``NAME.json``, ``save_model``, ``load_model``). The training layer imports from here;
nothing here imports training (docs/ARCHITECTURE.md).
"""

from ..errors import ArchitectureMismatch, ModelError
from .checkpoints import Checkpoints, load_run, read_run_config, state_checksum
from .files import (
    SHIPPED_MODELS,
    WEIGHTS_DIR,
    check_params_finite,
    load_model,
    load_model_files,
    params_from_bytes,
    save_model,
)
from .networks import (
    ARCHITECTURES,
    MLP,
    AttnBlock,
    ResBlock,
    UNet,
    check_same_architecture,
    init_params,
    logsnr_embedding,
    make_network,
    num_params,
    param_shapes,
)
from .trained import FORMAT, TrainedModel, network_from_config, process_from_config, process_to_config

__all__ = [
    "ArchitectureMismatch", "ModelError", "Checkpoints", "load_run", "read_run_config", "state_checksum",
    "SHIPPED_MODELS", "WEIGHTS_DIR", "check_params_finite", "load_model", "load_model_files", "params_from_bytes",
    "save_model", "ARCHITECTURES", "MLP", "AttnBlock", "ResBlock", "UNet", "check_same_architecture", "init_params",
    "logsnr_embedding", "make_network", "num_params", "param_shapes", "FORMAT", "TrainedModel", "network_from_config",
    "process_from_config", "process_to_config",
]
