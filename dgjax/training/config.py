"""A training run's settings (``TrainConfig``, saved as RUN/config.json) and the model config they imply."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..models import process_to_config
from ..processes import VP, LinearFlow

WEIGHTINGS = ("likelihood", "sigmoid")
IMPORTANCE = ("adaptive", "uniform")
OBJECTIVES = ("eps", "flow")
# settings that may change when a run is resumed (they do not affect the parameters)
_RESUME_FREE = ("eval_every", "eval_num", "ckpt_every", "keep", "final_eval_num", "eval_rtol")


@dataclass
class TrainConfig:
    """Every setting of a training run (saved as RUN/config.json)."""

    data: str = "digits"
    patch_size: int = 16
    objective: str = "eps"  # "eps": VP eps-prediction; "flow": flow matching on LinearFlow (flow_matching_loss_fn)
    arch: str = "unet"
    arch_kwargs: dict = field(default_factory=lambda: dict(channels=32, ch_mult=[1, 2], num_res_blocks=2,
                                                           attn_resolutions=[4], dropout=0.1))
    lambda_min: float = -10.0
    lambda_max: float = 10.0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    lr_final_frac: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weighting: str = "likelihood"
    sigmoid_bias: float = 2.0
    importance: str = "adaptive"
    num_bins: int = 100
    hist_decay: float = 0.99
    uniform_mix: float = 0.05
    seed: int = 0
    eval_every: int = 500
    eval_num: int = 32
    final_eval_num: int = 256
    eval_rtol: float = 1e-3
    ckpt_every: int = 500
    keep: int = 3

    def validate(self) -> TrainConfig:
        def need(ok, name, msg):
            if not ok:
                raise InvalidArgument(f"{name}: {msg}; got {getattr(self, name)!r}")

        need(self.weighting in WEIGHTINGS, "weighting", f"choose one of {WEIGHTINGS}")
        need(self.importance in IMPORTANCE, "importance", f"choose one of {IMPORTANCE}")
        need(self.objective in OBJECTIVES, "objective", f"choose one of {OBJECTIVES}")
        if self.objective == "flow":
            need(self.weighting == "likelihood", "weighting", "flow matching has its own (velocity) loss; "
                 "use weighting='likelihood' (the default) with objective='flow'")
            need(self.importance == "uniform", "importance", "flow matching samples t uniformly; "
                 "use importance='uniform' with objective='flow'")
        for k in ("steps", "batch_size", "num_bins", "eval_every", "eval_num", "ckpt_every", "keep", "final_eval_num"):
            need(isinstance(getattr(self, k), int) and getattr(self, k) >= 1, k, "must be an int >= 1")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**32, "seed",
             "must be an int in [0, 2^32 - 1] (the data order uses its 32 bits)")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 <= self.ema_decay < 1, "ema_decay", "must lie in [0, 1)")
        need(0 <= self.hist_decay < 1, "hist_decay", "must lie in [0, 1)")
        need(0 < self.uniform_mix <= 1, "uniform_mix", "must lie in (0, 1]")
        need(self.grad_clip > 0, "grad_clip", "must be > 0")
        need(self.lambda_min < self.lambda_max, "lambda_min", "must be below lambda_max")
        return self

    @property
    def data_kwargs(self) -> dict:
        return {"patch_size": self.patch_size} if self.data == "patches" else {}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InvalidArgument(f"training config: unknown settings {sorted(unknown)}")
        return cls(**d)


def model_config(cfg: TrainConfig, shape, name: str = "model") -> dict:
    """The model part of a config (what ``dg.load_model`` needs): objective, process and parametrization
    (eps on VP, or the velocity "v" on LinearFlow for objective "flow")."""
    if cfg.objective == "flow":
        process, param = process_to_config(LinearFlow()), "v"
    else:
        process, param = process_to_config(VP(cfg.lambda_min, cfg.lambda_max)), "eps"
    return {"name": name, "arch": cfg.arch, "arch_kwargs": cfg.arch_kwargs, "shape": list(shape),
            "objective": cfg.objective, "process": process, "parametrization": param,
            "data": cfg.data, "data_kwargs": cfg.data_kwargs}

