"""m2t_jax: JAX/Flax reference implementation of M2T (Mentzer et al., ICCV 2023).

Public API:
* ``Codec`` (images <-> bytes) and ``EntropyCoder`` (integer latents <-> bytes),
  with their errors ``BitstreamError`` (and its ``DecodeMismatchError``,
  ``StreamTooLargeError``), ``ImageError``, ``LatentError``;
* ``get_config(kind, size)`` and the registry of entropy-model kinds
  (``m2t_jax.entropy.registry``), the interface they implement
  (``m2t_jax.entropy.base.EntropyModel``);
* the Flax modules (``CompressionModel``, ``MT``, ``M2T``, ``ElicAnalysis``,
  ``ElicSynthesis``, ``MixtureHead``) and the pure schedule functions in
  ``m2t_jax.entropy.schedules``.
"""

from m2t_jax.codec import (BitstreamError, Codec, DecodeMismatchError, ImageError,
                           StreamTooLargeError)
from m2t_jax.coding.entropy_coder import EntropyCoder
from m2t_jax.input_checks import LatentError
from m2t_jax.configs import get_config
from m2t_jax.entropy.base import EntropyModel
from m2t_jax.entropy.gmm import Mixture, MixtureHead
from m2t_jax.entropy.m2t import M2T
from m2t_jax.entropy.mt import MT
from m2t_jax.model import CompressionModel, build_model, rd_loss
from m2t_jax.nn.elic import ElicAnalysis, ElicSynthesis

__all__ = [
    "BitstreamError", "Codec", "CompressionModel", "DecodeMismatchError",
    "ElicAnalysis", "ElicSynthesis", "StreamTooLargeError",
    "EntropyCoder", "EntropyModel", "ImageError", "LatentError", "M2T", "MT", "Mixture",
    "MixtureHead", "build_model", "get_config", "rd_loss",
]
__version__ = "0.1.0"
