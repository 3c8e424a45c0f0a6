"""Training score networks (optax): the eps-prediction denoising loss on the VP log-SNR process.

Modules: ``config`` (``TrainConfig``) <- ``loss`` <- ``step`` (optimiser, state, compiled step, held-out
evaluation) <- ``checkpoints`` (run config, resume checks; the orbax files are ``dgjax.models.checkpoints``)
<- ``loop`` (``train``). Training imports the models layer; the models layer never imports training.

Loss. With lambda the log-SNR, ``x_lambda = alpha x + sigma eps`` (alpha^2 = sigmoid(lambda),
sigma^2 = sigmoid(-lambda)) and ``lambda ~ p(lambda)`` on [lambda_min, lambda_max], the per-example loss is

    L = 1/2 * w(lambda) / p(lambda) * |eps - eps_hat(x_lambda, lambda)|^2 / D        (nats per dimension)

an unbiased estimate of ``1/(2D) int w(lambda) E|eps - eps_hat|^2 d lambda`` (Kingma et al. 2021; Kingma &
Gao 2023). Weightings (``weighting``):

* ``"likelihood"`` (default): w = 1, unweighted in log-SNR -- the diffusion term of the ELBO (the
  continuous-time VDM loss); the published models of the density-guidance papers were trained this way.
* ``"sigmoid"`` (perceptual): w = sigmoid(sigmoid_bias - lambda), Kingma & Gao's sigmoid weighting, which
  puts weight on high noise levels (better samples, worse likelihood).

Noise-level sampling (``importance``):

* ``"adaptive"`` (default): Kingma & Gao's adaptive importance sampling, as the published code uses it:
  p(lambda) is piecewise constant on ``num_bins`` equal bins of [lambda_min, lambda_max], proportional to
  a running estimate (an EMA with decay ``hist_decay`` of the batch mean in each bin) of
  E[w(lambda) |eps - eps_hat|^2], mixed with ``uniform_mix`` of the uniform density so no bin starves.
  Dividing by p(lambda) keeps the estimate unbiased while lowering its variance.
* ``"uniform"``: p(lambda) = 1 / (lambda_max - lambda_min).

Optimisation (optax): Adam with linear warm-up and cosine decay to ``lr_final_frac * lr``
(``optax.warmup_cosine_decay_schedule``; the rate is injected per step with ``optax.inject_hyperparams``),
global-norm gradient clipping, an EMA of the parameters (``optax.incremental_update`` with decay
``min(ema_decay, (1 + step) / (10 + step))``; the EMA parameters are the ones exported and evaluated). One
jit-compiled step does the loss, the update, the EMA and the histogram.

Determinism and resume. The batch at step k is ``dataset.train_batch(seed, k, batch_size)`` and the
step's randomness is ``fold_in(key(seed), k)``: both are pure functions of (seed, step). A checkpoint holds
the whole state (parameters, EMA, optimiser state, histogram, step), so ``resume=True`` (``dgjax train
--resume``) continues a killed run to exactly the parameters an uninterrupted run reaches.

Checkpoints (orbax-checkpoint) go to ``RUN/checkpoints/STEP``; orbax writes each into a temporary
directory and renames it when complete, so a kill during a save never leaves a half-written checkpoint
that looks valid (leftover temporary directories are deleted when the run is resumed). The last ``keep``
are kept. At the end the EMA parameters are exported as ``RUN/model.msgpack`` + ``RUN/model.json``
(``dg.load_model(RUN)``), with the held-out bits/dim measured by ``dg.log_likelihood``.
"""

from .checkpoints import Checkpoints, load_run, state_checksum
from .config import IMPORTANCE, OBJECTIVES, WEIGHTINGS, TrainConfig, model_config
from .loop import TrainingInterrupted, TrainResult, train
from .loss import flow_matching_loss_fn, lambda_density, make_loss_fn, sample_lambda, update_histogram, weight
from .step import (
    heldout_bits_per_dim,
    init_state,
    learning_rate,
    lr_schedule,
    make_evaluator,
    make_optimizer,
    make_train_step,
)

__all__ = [
    "Checkpoints", "load_run", "state_checksum", "IMPORTANCE", "OBJECTIVES", "WEIGHTINGS", "TrainConfig",
    "model_config", "TrainingInterrupted", "TrainResult", "train", "flow_matching_loss_fn", "lambda_density",
    "make_loss_fn", "sample_lambda", "update_histogram", "weight", "heldout_bits_per_dim", "init_state",
    "learning_rate", "lr_schedule", "make_evaluator", "make_optimizer", "make_train_step",
]
