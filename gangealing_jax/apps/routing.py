"""Which STN head congeals each image, and whether the image is mirrored first.

- One head: with `flips`, x or mirror(x), whichever gives the smoother residual flow
  (`points.forward_with_flip`); without, x as it is.
- Several heads (a clustering model): the head its cluster classifier predicts for each image
  (`AlignmentModel.classifier`), or the cluster given. A classifier trained with flips (2K
  classes) also decides the mirror, whatever `flips` says: its classes are (head, mirrored or not)
  pairs, learned on samples the run congealed mirrored where that fitted better, so a head is only
  right together with its mirror decision (the reference's `determine_flips` does the same). With
  a given cluster, the mirror is the better of that head's two classes. A classifier with K
  classes, or none, leaves the mirror to the flow test above, run with the chosen heads.

Every function here is jit-compatible; `cluster` may be a traced (N,) array of heads.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from gangealing_jax.apps import points as point_ops
from gangealing_jax.apps.model import AlignmentModel, stn_input
from gangealing_jax.errors import ConfigError
from gangealing_jax.models.cluster_classifier import assign, flip_decisions, mirror_where


class Route(NamedTuple):
    inputs: jnp.ndarray  # (N, S, S, C) the images, mirrored where `flipped`
    heads: jnp.ndarray | None  # (N,) int32 head of every image; None for a single-head model
    flipped: jnp.ndarray  # (N,) bool


def given_heads(model: AlignmentModel, n: int, cluster) -> jnp.ndarray | None:
    """(N,) int32 heads for a given cluster (an int, or (N,) heads); None for one head."""
    heads = model.stn.config.num_heads
    if isinstance(cluster, int | np.integer):
        if heads == 1 and cluster != 0:
            raise ConfigError(f"cluster={cluster}, but the model has a single head")
        if not 0 <= cluster < heads:
            raise ConfigError(f"cluster={cluster}: the model has clusters 0..{heads - 1}")
    elif cluster is None:
        if heads > 1:
            raise ConfigError(
                f"the model has {heads} clusters and no cluster classifier: pass a cluster in "
                f"0..{heads - 1}, or load the model with its classifier"
            )
    if heads == 1:
        return None
    return jnp.broadcast_to(jnp.asarray(cluster, jnp.int32), (n,))


def flow_flips(model: AlignmentModel, source, heads=None) -> Route:
    """Mirror where mirror(x) gives the smoother residual flow (with `heads`, if given)."""
    forward = model.forward_settings  # a fresh dict
    if heads is not None:
        forward["heads"] = heads
    small = stn_input(source, model.flow_size)
    flipped = point_ops.forward_with_flip(model.stn, model.variables, small, **forward).flipped
    return Route(mirror_where(source, flipped), heads, flipped)


def route(model: AlignmentModel, source, *, flips: bool, cluster=None) -> Route:
    """Heads and mirrors of NHWC images in [-1, 1] (see the module docstring).

    cluster: None (the classifier decides), a head for every image, or (N,) heads.
    """
    n = source.shape[0]
    classifier = model.classifier if model.stn.config.num_heads > 1 else None
    if classifier is not None:
        logits = classifier.logits(source)  # (N, K) or (N, 2K)
        k = model.stn.config.num_heads
        if cluster is None:
            choice = assign(logits, k)
            heads, flip = choice.head, choice.flip
        else:
            heads = given_heads(model, n, cluster)
            flip = jnp.zeros((n,), bool)
            if classifier.flips:
                per_head = flip_decisions(logits, k).flip  # (N, K)
                flip = jnp.take_along_axis(per_head, heads[:, None], axis=1)[:, 0]
        if classifier.flips:
            return Route(mirror_where(source, flip), heads, flip)
    else:
        heads = given_heads(model, n, cluster)
    if flips:
        return flow_flips(model, source, heads)
    return Route(source, heads, jnp.zeros((n,), bool))
