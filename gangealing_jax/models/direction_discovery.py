"""The two trained parts of unsupervised direction discovery (Voynov & Babenko 2020).

* `DirectionMatrix` holds K latent directions in W as a raw (K, D) parameter and returns them
  constrained: unit-norm rows, or orthonormal rows (the Q factor of a QR decomposition, signs
  fixed so that the map from the raw parameter is smooth and deterministic).
* `Reconstructor` sees an image pair (G(w), G(w + eps * d_k)) and predicts which direction k was
  taken (logits) and by how much (eps).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

CONSTRAINTS = ("unit", "orthonormal")


def constrain(raw, constraint: str):
    """(K, D) raw rows -> (K, D) unit-norm ("unit") or orthonormal ("orthonormal") rows."""
    if constraint == "unit":
        return raw / jnp.linalg.norm(raw, axis=1, keepdims=True)
    if constraint == "orthonormal":
        q, r = jnp.linalg.qr(raw.T)  # (D, K), (K, K)
        # QR is unique only up to the signs of R's diagonal; fixing them keeps q continuous in raw.
        signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)
        return (q * signs).T
    raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")


class DirectionMatrix(nn.Module):
    """() -> (K, D) constrained directions; the raw matrix starts as N(0, 1) entries."""

    num_directions: int
    dim: int
    constraint: str = "orthonormal"

    @nn.compact
    def __call__(self):
        if self.constraint == "orthonormal" and self.num_directions > self.dim:
            raise ValueError(
                f"{self.num_directions} orthonormal directions do not fit in {self.dim} dims"
            )
        raw = self.param(
            "raw", nn.initializers.normal(1.0), (self.num_directions, self.dim)
        )  # (K, D)
        return constrain(raw, self.constraint)


@dataclasses.dataclass(frozen=True)
class ReconstructorConfig:
    num_directions: int = 16  # K: classes of the direction logits
    size: int = 64  # pairs are resized to size x size first (images smaller are kept)
    width: int = 32  # channels of the first conv; doubled at every stride-2 conv
    depth: int = 3  # stride-2 convs


class Reconstructor(nn.Module):
    """(N, H, W, 3) pairs x, y -> logits (N, K) and predicted shift (N,)."""

    config: ReconstructorConfig

    @nn.compact
    def __call__(self, x, y):
        cfg = self.config
        if x.shape[1] > cfg.size:
            shape = (x.shape[0], cfg.size, cfg.size, x.shape[3])
            x = jax.image.resize(x, shape, "linear", antialias=True)
            y = jax.image.resize(y, shape, "linear", antialias=True)
        # The difference carries the shift; handing it over directly saves the net learning it.
        h = jnp.concatenate([x, y - x], axis=-1)  # (N, S, S, 6)
        for i in range(cfg.depth):
            h = nn.Conv(cfg.width * 2**i, (3, 3), strides=(2, 2), name=f"conv_{i}")(h)
            h = nn.leaky_relu(h, 0.2)
        # Flattened, not pooled: where in the image a shift acts tells directions apart.
        h = h.reshape(h.shape[0], -1)  # (N, S/2^depth * S/2^depth * C)
        h = nn.leaky_relu(nn.Dense(4 * cfg.width, name="hidden")(h), 0.2)
        logits = nn.Dense(cfg.num_directions, name="logits")(h)
        shift = nn.Dense(1, name="shift")(h)[:, 0]
        return logits, shift
