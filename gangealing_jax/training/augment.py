"""Random similarity poses for G(w): widening the poses the STN learns to undo.

A generator trained on few images often covers less pose variation than the real images the STN
will later align (a small generator tends to draw its objects upright and centred). Moving G(w) by a
random similarity before the STN sees it, while keeping the congealed target where it is, teaches
the STN to undo those poses too. The strength grows as psi anneals (`strength = 1 - psi`), so the
STN first learns the generator's own poses, as in the reference, and the wider ones after.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gangealing_jax.ops.sampling import similarity_matrix


@dataclasses.dataclass(frozen=True)
class PoseAugmentation:
    """Ranges at full strength. All zero (the default) disables augmentation."""

    rotation_deg: float = 0.0  # rotation uniform in [-r, r] degrees
    log_scale: float = 0.0  # zoom exp(u), u uniform in [-s, s]
    translation: float = 0.0  # shift uniform in [-t, t] per axis, in normalized units ([-1, 1])

    def __post_init__(self):
        # Below a half-turn: the raw rotation parameter is arctanh(angle / pi).
        if not 0 <= self.rotation_deg < 180:
            raise ValueError(f"rotation_deg must be in [0, 180), got {self.rotation_deg}")
        if self.log_scale < 0 or self.translation < 0:
            raise ValueError(
                f"log_scale and translation must be >= 0, got {self.log_scale}, {self.translation}"
            )

    @property
    def enabled(self) -> bool:
        return self.rotation_deg > 0 or self.log_scale > 0 or self.translation > 0


def random_poses(key: jax.Array, shape: tuple, aug: PoseAugmentation, strength) -> jnp.ndarray:
    """(*shape, 2, 3) affine matrices (F.affine_grid convention: output -> input coordinates).

    strength: scalar in [0, 1] scaling every range; 0 gives identity matrices.
    """
    rot_key, scale_key, shift_key = jax.random.split(key, 3)

    def uniform(k, bound, extra=()):
        return jax.random.uniform(k, shape + extra, minval=-1.0, maxval=1.0) * bound * strength

    angle = uniform(rot_key, math.radians(aug.rotation_deg))
    # similarity_matrix takes the reference's raw parameters: rotation = pi * tanh(raw).
    raw_rotation = jnp.arctanh(angle / math.pi)
    shift = uniform(shift_key, aug.translation, (2,))
    return similarity_matrix(
        raw_rotation, uniform(scale_key, aug.log_scale), shift[..., 0], shift[..., 1]
    )
