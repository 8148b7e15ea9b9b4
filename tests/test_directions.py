"""GANSpace and SeFa directions, per-layer edits and the directions.npz file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.errors import ConfigError, InputFileError
from gangealing_jax.training.directions import (
    edit_w_plus,
    find_directions,
    load_directions,
    parse_layers,
    save_directions,
    sefa,
)
from gangealing_jax.training.latent_init import mapped_chunks
from gangealing_jax.training.pca import exact_pca
from tests.tiny_models import tiny_generator


def _stacked_modulations(variables, with_to_rgb):
    """The modulation weights found by name in the flattened tree, independently of the library's
    walk over the layers, each output unit's weight vector scaled to unit length: (M, D)."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        name = jax.tree_util.keystr(path)
        if "modulation" in name and name.endswith("['weight']"):
            if with_to_rgb or "to_rgb" not in name:
                w = np.asarray(leaf, np.float64)  # (D, C)
                rows.append((w / np.sqrt((w**2).sum(axis=0))).T)
    return np.concatenate(rows)


@pytest.mark.parametrize("with_to_rgb", [False, True])
def test_sefa_is_orthonormal_and_matches_an_independent_factorisation(with_to_rgb):
    generator, variables = tiny_generator(size=16, style_dim=24, channels=8)
    vectors, eigenvalues = sefa(generator.config, variables, 6, include_to_rgb=with_to_rgb)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(6), atol=1e-10)
    assert np.all(np.diff(eigenvalues) <= 0)
    # Singular vectors of A are the eigenvectors of A^T A; singular values squared, its eigenvalues.
    a = _stacked_modulations(variables, with_to_rgb)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(eigenvalues, s[:6] ** 2, rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(vectors * vt[:6], axis=1)), 1.0, atol=1e-8)
    # A layer range keeps only the layers reading it: the first layer's conv alone has rank C = 8.
    first, values = sefa(generator.config, variables, 8, layers=(0, 1))
    np.testing.assert_allclose(values.sum(), 8.0, rtol=1e-8)  # trace of A^T A: 8 unit rows
    assert not np.allclose(np.abs(first[:6] @ vectors.T), np.eye(6), atol=1e-3)


def test_ganspace_equals_the_pca_of_the_same_samples():
    generator, variables = tiny_generator(size=16, style_dim=24, channels=8)
    key = jax.random.PRNGKey(3)
    found = find_directions("ganspace", generator, variables, key, num=5, num_samples=3000)
    basis = exact_pca(mapped_chunks(generator, variables, key, 3000), 5)
    np.testing.assert_allclose(found.vectors, basis.components, atol=1e-6)
    np.testing.assert_allclose(found.std**2, basis.explained_variance, rtol=1e-5)
    np.testing.assert_allclose(found.mean, basis.mean, rtol=1e-5, atol=1e-6)
    assert found.method == "ganspace" and found.layers == (0, generator.config.n_latent)
    # SeFa's spread is measured on mapped samples too: its unit is one standard deviation.
    sefa_set = find_directions("sefa", generator, variables, key, num=5, num_samples=3000)
    w = np.concatenate(
        [np.asarray(c, np.float64) for c in mapped_chunks(generator, variables, key, 3000)]
    )
    np.testing.assert_allclose(
        sefa_set.std, (w @ sefa_set.vectors.T.astype(np.float64)).std(0, ddof=1), rtol=1e-4
    )
    with pytest.raises(ConfigError, match="train_directions"):
        find_directions("learned", generator, variables, key, num=2)


def test_edits_touch_only_the_chosen_layers():
    w_plus = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 4))
    direction = jnp.array([1.0, 0.0, -2.0, 0.5])
    amount = jnp.array([1.0, -2.0, 0.5])
    edited = np.asarray(edit_w_plus(w_plus, direction, amount, (2, 5)))
    np.testing.assert_array_equal(edited[:, :2], w_plus[:, :2])
    np.testing.assert_array_equal(edited[:, 5:], w_plus[:, 5:])
    expected = w_plus[:, 2:5] + amount[:, None, None] * direction
    np.testing.assert_allclose(edited[:, 2:5], expected, rtol=1e-6)
    assert parse_layers("0-5", 8) == (0, 6) and parse_layers("3", 8) == (3, 4)
    assert parse_layers("all", 8) == (0, 8)
    for bad in ("5-9", "x", "4-2"):
        with pytest.raises(ConfigError, match="layers"):
            parse_layers(bad, 8)


def test_directions_file_round_trip(tmp_path):
    generator, variables = tiny_generator(size=16, style_dim=24, channels=8)
    found = find_directions(
        "sefa", generator, variables, jax.random.PRNGKey(1), num=3, layers=(1, 4), num_samples=500
    )
    save_directions(tmp_path / "directions.npz", found)
    loaded = load_directions(tmp_path / "directions.npz")
    assert loaded.method == "sefa" and loaded.layers == (1, 4)
    for a, b in zip(found, loaded, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="bad.npz"):
        load_directions(tmp_path / "bad.npz")
