"""Which directions the congealing vector moves along: `config.congealing.basis`.

* "pca" (the reference, and the default): the top W-space principal components, fitted in
  `latent_init` (nothing here is used).
* "sefa": the top SeFa directions of the modulations of the W+ layers [0, inject) that c drives,
  centred on the mean mapped w.
* a path to a directions.npz (`python -m gangealing_jax.directions` or the learned-directions
  trainer): its first ndirs rows, centred on the mean w it records.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from gangealing_jax.errors import ConfigError
from gangealing_jax.training.directions import load_directions, sample_w, sefa

REFERENCE_BASIS = "pca"
NAMED_BASES = ("pca", "sefa")


def basis_name(config) -> str:
    """The configured basis; configs written before the field existed use the reference's."""
    section = config.get("congealing")
    return str(section.get("basis", REFERENCE_BASIS)) if section is not None else REFERENCE_BASIS


def basis_fingerprint(basis: str) -> str:
    """What a cache of the congealing init must match: the name, or the file's SHA-256."""
    if basis in NAMED_BASES:
        return basis
    with open(os.path.expanduser(basis), "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def fixed_basis(
    basis: str, generator, variables, key, *, ndirs: int, inject: int, num_samples: int
):
    """(directions (ndirs, D) float32, mean (D,) float32) of a non-PCA basis; None for "pca"."""
    if basis == REFERENCE_BASIS:
        return None
    config = generator.config
    if basis == "sefa":
        vectors, _ = sefa(config, variables, ndirs, layers=(0, inject))
        mean = sample_w(generator, variables, key, num_samples).mean(axis=0)
        return np.asarray(vectors, np.float32), np.asarray(mean, np.float32)
    found = load_directions(os.path.expanduser(basis))
    count, dim = found.vectors.shape
    if dim != config.style_dim:
        raise ConfigError(
            f"--config.congealing.basis={basis}: directions of dimension {dim}, but the "
            f"generator's W has {config.style_dim}; use directions found for this generator"
        )
    if count < ndirs:
        raise ConfigError(
            f"--config.congealing.basis={basis}: holds {count} directions, --config.ndirs asks "
            f"for {ndirs}; lower ndirs or write more directions"
        )
    return found.vectors[:ndirs].astype(np.float32), found.mean.astype(np.float32)
