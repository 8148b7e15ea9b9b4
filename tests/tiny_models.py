"""Small randomly initialised models for tests that need no reference weights."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gangealing_jax.losses.gangealing import Frozen
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stylegan2 import Generator, GeneratorConfig


def tiny_generator(size: int = 16, style_dim: int = 32, n_mlp: int = 2, channels: int = 16, seed=0):
    config = GeneratorConfig(
        size=size, style_dim=style_dim, n_mlp=n_mlp, channels=(channels,) * (size.bit_length() - 2)
    )
    generator = Generator(config)
    variables = generator.init(
        jax.random.PRNGKey(seed), jnp.zeros((1, style_dim)), noise_mode="const"
    )
    return generator, variables


@functools.partial(jax.jit, static_argnums=2)
def perturbed(variables, key, scale: float):
    """Every leaf plus scale * N(0, 1) noise: zero-initialised warp heads stop being the
    identity."""
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, noisy)


def tiny_stn_config(
    flow_size: int = 16, supersize: int = 16, num_heads: int = 1, channels: int = 8
):
    from gangealing_jax.models.stn import STNConfig

    resolutions = [2**i for i in range(0, 11)]
    return STNConfig(
        transforms=("similarity", "flow"),
        flow_size=flow_size,
        supersize=supersize,
        channels=tuple((r, channels) for r in resolutions),
        num_heads=num_heads,
    )


def identity_model_bundle(directory, num_heads: int = 1):
    """An exported alignment model whose STN is untrained (its warp starts at the identity):
    flow 16 over 32x32 sources. Returns the bundle directory."""
    import numpy as np

    from gangealing_jax.convert.bundle import TRAINED_MODEL_KIND, save_bundle
    from gangealing_jax.convert.stn import stn_config_to_dict
    from gangealing_jax.models.stn import STN

    config = tiny_stn_config(flow_size=16, supersize=32, num_heads=num_heads)
    stn = STN(config)
    variables = jax.jit(stn.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    meta = {"stn": stn_config_to_dict(config), "test_time": {"iters": 1, "padding_mode": "border"}}
    coefficients = np.zeros((num_heads, 1), np.float32)
    tree = {"stn": variables, "congealing": {"coefficients": coefficients}}
    return save_bundle(directory, TRAINED_MODEL_KIND, meta, tree)


class ObjectiveInputs(NamedTuple):
    generator: Generator
    stn: STN
    trainable: dict  # {"stn": variables, "congealing": {"coefficients": (1, 2)}}
    frozen: Frozen
    z: jnp.ndarray  # (3, style_dim)


def tiny_objective_inputs() -> ObjectiveInputs:
    """A 16 px generator, an identity STN and 3 latents: what the objective's tests feed it."""
    generator, gvars = tiny_generator(size=16, style_dim=16, channels=8)
    stn = STN(tiny_stn_config(flow_size=16, supersize=16))
    stn_vars = stn.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    d = generator.config.style_dim
    frozen = Frozen(gvars, jnp.eye(2, d), jnp.zeros((1, d)))
    trainable = {"stn": stn_vars, "congealing": {"coefficients": jnp.full((1, 2), 0.1)}}
    z = jax.random.normal(jax.random.PRNGKey(4), (3, d))
    return ObjectiveInputs(generator, stn, trainable, frozen, z)
