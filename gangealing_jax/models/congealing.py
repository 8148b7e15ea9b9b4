"""The congealing vector c: learned target latents in the W-space PCA subspace.

For each of K heads (clusters) the target latent is ``lat_mean + coefficients[k] @ directions``. At
truncation ``psi`` a sample's ``w`` is pulled towards that target in the first ``inject_index``
style layers only; later layers keep ``w``, so the target fixes pose/shape while the sample keeps
its appearance. Only ``coefficients`` is trained; ``directions`` and ``lat_mean`` come from the
W-space PCA and stay fixed, so they are call arguments rather than parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_lerp(start, end, weight):
    """``start + weight * (end - start)`` evaluated as torch.lerp does (two branches on |weight|).

    Using the ``end``-anchored form for |weight| >= 0.5 makes weight == 1 return ``end`` exactly.
    """
    diff = end - start
    small = jnp.abs(weight) < 0.5
    return jnp.where(small, start + weight * diff, end - diff * (1.0 - weight))


def mix_latents(w, directions, lat_mean, coefficients, psi, inject_index: int, n_latent: int):
    """W+ latents for every (sample, head) pair.

    Args:
      w: (B, D) W-space latents of the samples.
      directions: (ndirs, D) PCA directions.
      lat_mean: (D,) or (1, D) centre of the PCA subspace.
      coefficients: (K, ndirs) congealing coefficients, one row per head.
      psi: scalar truncation; 1 keeps ``w``, 0 gives the head's target latent.
      inject_index: number of leading style layers that receive the truncated latent (static).
      n_latent: total number of style layers of the generator (static).

    Returns:
      (B*K, n_latent, D), batch-major rows (row ``b*K + k`` is sample b under head k).
    """
    if w.ndim != 2:
        raise ValueError(f"w must be (B, D) W-space latents, got shape {w.shape}")
    if not 0 <= inject_index <= n_latent:
        raise ValueError(f"inject_index {inject_index} must lie in [0, n_latent={n_latent}]")
    batch, dim = w.shape
    num_heads = coefficients.shape[0]
    offsets = jnp.matmul(coefficients, directions, precision=jax.lax.Precision.HIGHEST)  # (K, D)
    targets = jnp.reshape(lat_mean, (1, dim)) + offsets  # (K, D)
    targets = jnp.broadcast_to(targets[None], (batch, num_heads, dim))  # (B, K, D)
    samples = jnp.broadcast_to(w[:, None], (batch, num_heads, dim))  # (B, K, D)
    truncated = torch_lerp(targets, samples, jnp.asarray(psi, w.dtype)).reshape(-1, 1, dim)
    samples = samples.reshape(-1, 1, dim)  # (B*K, 1, D)
    return jnp.concatenate(
        [
            jnp.broadcast_to(truncated, (batch * num_heads, inject_index, dim)),
            jnp.broadcast_to(samples, (batch * num_heads, n_latent - inject_index, dim)),
        ],
        axis=1,
    )  # (B*K, n_latent, D)


class CongealingVector(nn.Module):
    """Holds the learned ``coefficients`` (num_heads, ndirs), initialised to zeros (c = lat_mean).

    Clustering models overwrite the initial coefficients with the PCA encodings of k-means++
    centroids (`PCABasis.encode`).
    """

    num_heads: int
    ndirs: int

    @nn.compact
    def __call__(self, w, directions, lat_mean, psi, *, inject_index: int, n_latent: int):
        """(B, D) latents -> (B*K, n_latent, D) W+ latents; see `mix_latents`."""
        if directions.shape[0] != self.ndirs:
            raise ValueError(f"expected {self.ndirs} directions, got shape {directions.shape}")
        coefficients = self.param(
            "coefficients", nn.initializers.zeros_init(), (self.num_heads, self.ndirs)
        )
        return mix_latents(w, directions, lat_mean, coefficients, psi, inject_index, n_latent)
