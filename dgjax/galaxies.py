"""Old location of galaxygrad's galaxy models: they live in ``dgjax.models.galaxies`` now (re-exported)."""

from .models.galaxies import (GALAXY_MODELS, GALAXYGRAD_VERSION, AsinhDisplay, GalaxyModel,  # noqa: F401
                              galaxy_process, load_galaxy_model)
