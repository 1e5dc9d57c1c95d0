"""pyro_mmvae: multimodal variational autoencoders for Pyro.

The multimodal protocol (batches, masks, site names) lives in :mod:`pyro_mmvae.protocol`; the
bounds in :mod:`pyro_mmvae.infer`; evaluation in :mod:`pyro_mmvae.eval`. Generative models are
in :mod:`pyro_mmvae.models` and guides in :mod:`pyro_mmvae.guides` (the repository's top-level
``models/`` and ``guides/`` folders, installed under this package so that a user's own
``models.py`` or ``guides.py`` never shadows them).
"""

from .infer import (JointMultimodalELBO, MaskedMultimodalELBO, MixtureMultimodalELBO,
                    MultimodalELBO, MultiSourceELBO, RecursiveMultimodalELBO,
                    SubsampledMultimodalELBO)
from .protocol import full_mask, obs_site, observe, validate_batch

__version__ = "0.1.0"

__all__ = [
    "JointMultimodalELBO",
    "MaskedMultimodalELBO",
    "MixtureMultimodalELBO",
    "MultiSourceELBO",
    "RecursiveMultimodalELBO",
    "MultimodalELBO",
    "SubsampledMultimodalELBO",
    "full_mask",
    "obs_site",
    "observe",
    "validate_batch",
]
