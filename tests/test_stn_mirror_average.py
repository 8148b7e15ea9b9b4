"""Mirror-averaged similarity regression: the congealing of a mirrored image is the mirrored
congealing, exactly for one similarity pass and to sampling precision when iterated."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.apps.model import load_model
from gangealing_jax.models.stn import STN
from gangealing_jax.models.stn_heads import mirror_averaged_params
from gangealing_jax.ops.sampling import similarity_matrix
from tests.tiny_models import identity_model_bundle, perturbed, tiny_stn_config

MIRROR = np.diag([-1.0, 1.0, 1.0])


def _random_stn(transforms, num_heads=1, seed=0):
    """A tiny STN whose weights (the zero-initialised heads included) are all random."""
    config = dataclasses.replace(
        tiny_stn_config(num_heads=num_heads), transforms=transforms, antialias=False
    )
    stn = STN(config)
    init_key, noise_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = stn.init(init_key, jnp.zeros((1, 16, 16, 3)))
    return stn, perturbed(variables, noise_key, 0.1)


def _images(n=3, seed=1):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, 16, 16, 3), minval=-1.0, maxval=1.0)


def _mirrored_matrix(matrix):
    """(N, 2, 3) warp of the mirrored image -> the warp it implies for the image itself."""
    full = np.concatenate(
        [np.asarray(matrix), np.tile([[[0.0, 0.0, 1.0]]], (len(matrix), 1, 1))], 1
    )
    return (MIRROR @ full @ MIRROR)[:, :2]


def test_averaged_params_of_an_image_and_its_mirror_pair_are_mirror_images():
    rng = np.random.default_rng(0)
    own, of_mirror = rng.normal(size=(2, 5, 4, 2))
    averaged = np.asarray(mirror_averaged_params(jnp.asarray(np.concatenate([own, of_mirror]))))
    swapped = np.asarray(mirror_averaged_params(jnp.asarray(np.concatenate([of_mirror, own]))))
    np.testing.assert_allclose(averaged[:, [1, 3]], swapped[:, [1, 3]], atol=1e-7)  # scale, y
    np.testing.assert_allclose(averaged[:, [0, 2]], -swapped[:, [0, 2]], atol=1e-7)  # rot, x
    # The mirror of the averaged warp is the averaged warp of the mirror.
    matrix = similarity_matrix(*(jnp.asarray(averaged[:, i, 0]) for i in range(4)))
    mirrored = similarity_matrix(*(jnp.asarray(swapped[:, i, 0]) for i in range(4)))
    np.testing.assert_allclose(_mirrored_matrix(mirrored), matrix, atol=1e-6)


@pytest.mark.parametrize("iters", [1, 2])
def test_mirror_averaged_stn_is_mirror_equivariant(iters):
    stn, variables = _random_stn(("similarity",))
    images = _images()
    run = jax.jit(
        lambda x, average: (
            stn.apply(
                variables, x, iters=iters, padding_mode="border", mirror_average=average
            ).matrix
        ),
        static_argnums=1,
    )
    mirror_images = jnp.flip(images, axis=2)
    averaged, averaged_of_mirror = run(images, True), run(mirror_images, True)
    np.testing.assert_allclose(_mirrored_matrix(averaged_of_mirror), averaged, atol=1e-5)
    plain, plain_of_mirror = run(images, False), run(mirror_images, False)
    assert np.abs(_mirrored_matrix(plain_of_mirror) - plain).max() > 1e-3  # random STNs are not
    if iters == 1:  # close to the mean of the two warps (the parameters are what is averaged)
        np.testing.assert_allclose(
            averaged, (plain + _mirrored_matrix(plain_of_mirror)) / 2, atol=0.01
        )


def test_flow_stage_and_heads_follow_the_averaged_similarity():
    stn, variables = _random_stn(("similarity", "flow"), num_heads=2)
    images = _images(n=2)
    out = stn.apply(variables, images, padding_mode="border", mirror_average=True)
    assert out.matrix.shape == (4, 2, 3) and out.flow.shape == (4, 16, 16, 2)
    mirrored = stn.apply(
        variables, jnp.flip(images, axis=2), padding_mode="border", mirror_average=True
    )
    np.testing.assert_allclose(_mirrored_matrix(mirrored.matrix), out.matrix, atol=1e-5)
    heads = jnp.array([1, 0])
    picked = stn.apply(variables, images, padding_mode="border", mirror_average=True, heads=heads)
    np.testing.assert_allclose(picked.matrix, out.matrix.reshape(2, 2, 2, 3)[[0, 1], [1, 0]])


def test_exported_models_read_the_setting_and_default_to_off(tmp_path):
    bundle = identity_model_bundle(tmp_path / "model")
    assert load_model(bundle).forward_settings["mirror_average"] is False
    meta_path = bundle / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["test_time"]["mirror_average"] = True
    meta_path.write_text(json.dumps(meta))
    assert load_model(bundle).forward_settings["mirror_average"] is True
