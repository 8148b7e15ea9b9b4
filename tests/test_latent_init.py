"""W-space initialisation of the congealing vector from a generator."""

import jax
import jax.numpy as jnp
import numpy as np

from gangealing_jax.training.latent_init import init_congealing, mapped_chunks
from tests.tiny_models import tiny_generator as _generator


def test_mapped_chunks_cover_exactly_the_requested_samples():
    G, variables = _generator()
    chunks = list(mapped_chunks(G, variables, jax.random.PRNGKey(0), 250, chunk=100))
    assert [c.shape[0] for c in chunks] == [100, 100, 50]
    again = list(mapped_chunks(G, variables, jax.random.PRNGKey(0), 250, chunk=100))
    np.testing.assert_array_equal(np.concatenate(chunks), np.concatenate(again))


def test_pca_init_is_orthonormal_and_centred():
    G, variables = _generator()
    for exact in (False, True):
        init = init_congealing(
            G,
            variables,
            jax.random.PRNGKey(1),
            ndirs=3,
            num_heads=1,
            num_pca_samples=2000,
            exact_pca_fit=exact,
        )
        d = init.directions
        np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-5)
        assert init.lat_mean.shape == (1, G.config.style_dim)
        np.testing.assert_array_equal(init.coefficients, np.zeros((1, 3)))


def test_kmeans_plusplus_centres_are_distinct_samples():
    G, variables = _generator()

    def pixel_distance(a, b):
        return jnp.mean(jnp.square(a - b), axis=(1, 2, 3))

    init = init_congealing(
        G,
        variables,
        jax.random.PRNGKey(2),
        ndirs=2,
        num_heads=3,
        num_pca_samples=500,
        distance=pixel_distance,
        inject_index=3,
        num_kmeans_samples=200,
    )
    assert init.coefficients.shape == (3, 2)
    assert len({tuple(np.round(c, 5)) for c in init.coefficients}) == 3
