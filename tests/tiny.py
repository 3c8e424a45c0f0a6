"""The small UNet the tests build (it compiles in seconds) and the model-file configuration of one: the one home
of both, imported by the test modules (pytest puts tests/ on the path)."""

# 8 channels, two levels, attention at 4x4, no dropout: the smallest UNet that exercises every block
TINY_UNET = dict(channels=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0)


def tiny_model_config(**over) -> dict:
    """A model file's configuration (``dgjax.models.save_model``) for the tiny UNet on 8x8 digits, eps-prediction
    on VP with log-SNR in [-10, 10]; ``over`` replaces keys."""
    cfg = {"name": "tiny", "arch": "unet", "arch_kwargs": dict(TINY_UNET), "shape": [8, 8, 1],
           "process": {"name": "VP", "lambda_min": -10.0, "lambda_max": 10.0}, "parametrization": "eps",
           "data": "digits", "data_kwargs": {}}
    cfg.update(over)
    return cfg
