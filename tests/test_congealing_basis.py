"""`congealing.basis`: the reference PCA by default, SeFa, or any directions.npz."""

import jax
import numpy as np
import pytest

from configs import test as test_config
from gangealing_jax.errors import ConfigError, InputFileError
from gangealing_jax.models.stylegan2 import Generator
from gangealing_jax.training.config_checks import check_gangealing_config
from gangealing_jax.training.directions import Directions, save_directions, sefa
from gangealing_jax.training.gangealing_setup import build_run, load_frozen_generator
from gangealing_jax.training.latent_init import coordinates, wspace_pca


def _config(basis=None):
    c = test_config.get_config()
    c.ndirs, c.num_pca_samples = 3, 400
    if basis is None:
        del c["congealing"]  # as in configs written before the field existed
    else:
        c.congealing.basis = basis
    return c


def _generator(config):
    g_key, _, init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed), 4)
    gconfig, gvars = load_frozen_generator(config.generator, g_key)
    return Generator(gconfig), gvars, jax.random.split(init_key)[0]  # the key the PCA gets


def test_default_basis_is_the_reference_pca():
    assert test_config.get_config().congealing.basis == "pca"
    config = _config("pca")
    setup, _ = build_run(config, jax.random.PRNGKey(config.seed))
    generator, gvars, pca_key = _generator(config)
    basis = wspace_pca(generator, gvars, pca_key, 3, 400)  # the reference's IncrementalPCA
    np.testing.assert_array_equal(setup.frozen.directions, basis.components.astype(np.float32))
    np.testing.assert_array_equal(setup.frozen.lat_mean, basis.mean.astype(np.float32)[None])
    # A config without the section (an older run's config.json) builds the same run.
    older, _ = build_run(_config(None), jax.random.PRNGKey(config.seed))
    jax.tree.map(np.testing.assert_array_equal, older.frozen, setup.frozen)


def test_sefa_and_file_bases(tmp_path):
    config = _config("sefa")
    setup, state = build_run(config, jax.random.PRNGKey(config.seed), tmp_path / "cache.npz")
    generator, gvars, _ = _generator(config)
    expected, _ = sefa(generator.config, gvars, 3, layers=(0, config.inject))
    np.testing.assert_allclose(setup.frozen.directions, expected, atol=1e-7)
    assert setup.frozen.lat_mean.shape == (1, generator.config.style_dim)
    np.testing.assert_array_equal(state.params["congealing"]["coefficients"], np.zeros((1, 3)))

    # Any directions.npz: its first ndirs rows and its mean; the cache of another basis is ignored.
    dim = generator.config.style_dim
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    mean = rng.normal(size=dim).astype(np.float32)
    path = tmp_path / "directions.npz"
    save_directions(
        path,
        Directions(
            vectors, np.ones(4, np.float32), mean, "learned", (0, 3), np.zeros(4, np.float32)
        ),
    )
    from_file, _ = build_run(_config(str(path)), jax.random.PRNGKey(0), tmp_path / "cache.npz")
    np.testing.assert_array_equal(from_file.frozen.directions, vectors[:3])
    np.testing.assert_array_equal(from_file.frozen.lat_mean, mean[None])

    too_few = _config(str(path))
    too_few.ndirs = 5
    with pytest.raises(ConfigError, match="holds 4 directions"):
        build_run(too_few, jax.random.PRNGKey(0))
    with pytest.raises(InputFileError, match="congealing.basis=nowhere.npz: no such"):
        check_gangealing_config(_config("nowhere.npz"))


def test_coordinates_invert_a_non_orthogonal_basis():
    rng = np.random.default_rng(1)
    directions, mean = rng.normal(size=(3, 8)), rng.normal(size=8)
    coefficients = rng.normal(size=(5, 3))
    points = mean + coefficients @ directions
    np.testing.assert_allclose(coordinates(points, directions, mean), coefficients, atol=1e-10)
