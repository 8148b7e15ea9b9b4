"""The congealing vector (latent mixing) and W-space PCA against the reference."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.models.congealing import CongealingVector, mix_latents, torch_lerp
from gangealing_jax.training.pca import exact_pca, incremental_pca
from tests.golden import assert_close, golden_cases, load_fixture

INTERP_KEY = re.compile(r"interp_k(\d+)_psi(\d+)(_latmeanalt)?")


@pytest.mark.parametrize("path", golden_cases("congealing"))
def test_mix_latents_match_reference(path):
    fx = load_fixture(path)
    meta, inputs = fx.meta, fx.inputs
    w = jnp.asarray(inputs["w"])
    inject_index, n_latent = meta["inject_index"], meta["n_latent"]
    covered = set()
    for key, expected in fx.outputs.items():
        match = INTERP_KEY.fullmatch(key)
        if match is None:
            continue
        heads, psi = int(match[1]), int(match[2]) / 100
        lat_mean = inputs["lat_mean_alt" if match[3] else "lat_mean"]
        coefficients = inputs[f"coefficients_k{heads}"]
        assert expected.shape == (meta["batch"] * heads, n_latent, meta["style_dim"])
        mixed = mix_latents(
            w, inputs["directions"], lat_mean, coefficients, psi, inject_index, n_latent
        )
        assert_close(mixed, expected, atol=1e-5, name=key)

        module = CongealingVector(num_heads=heads, ndirs=meta["ndirs"])
        params = module.init(
            jax.random.key(1),
            w,
            inputs["directions"],
            lat_mean,
            psi,
            inject_index=inject_index,
            n_latent=n_latent,
        )["params"]
        assert params["coefficients"].shape == coefficients.shape
        np.testing.assert_array_equal(params["coefficients"], 0.0)
        apply = jax.jit(module.apply, static_argnames=("inject_index", "n_latent"))
        from_module = apply(
            {"params": {"coefficients": jnp.asarray(coefficients)}},
            w,
            inputs["directions"],
            lat_mean,
            jnp.float32(psi),
            inject_index=inject_index,
            n_latent=n_latent,
        )
        assert_close(from_module, expected, atol=1e-5, name=f"module {key}")
        covered.add((heads, psi))
    assert covered == {(k, p) for k in meta["heads"] for p in meta["psis"]}


@pytest.mark.parametrize("path", golden_cases("congealing"))
def test_incremental_pca_matches_reference(path):
    fx = load_fixture(path)
    meta, out = fx.meta, fx.outputs
    basis = incremental_pca(fx.inputs["w_samples"], meta["ndirs"], meta["ipca_batch_size"])
    # The reference fits float32 samples, so its first batch is decomposed in float32; this fit is
    # float64 throughout, hence agreement to float32 rounding rather than bit for bit.
    assert_close(basis.components, out["pca_components"], atol=1e-5, name="components")
    assert_close(basis.mean, out["pca_mean"], atol=1e-5, name="mean")
    assert_close(basis.explained_variance, out["pca_explained_variance"], rtol=1e-5, name="var")
    assert_close(basis.singular_values, out["pca_singular_values"], rtol=1e-5, name="sv")
    assert_close(basis.encode(fx.inputs["pca_x"]), out["pca_encode"], rtol=1e-5, name="encode")
    buffers = basis.astype(np.float32)
    assert_close(buffers.components, out["ll_directions"], atol=1e-5, name="ll directions")
    assert_close(buffers.mean[None], out["ll_lat_mean"], atol=1e-5, name="ll lat_mean")


@pytest.mark.parametrize("path", golden_cases("congealing"))
def test_exact_pca_differs_from_reference_by_the_recorded_amount(path):
    fx = load_fixture(path)
    meta = fx.meta
    basis = exact_pca(fx.inputs["w_samples"], meta["ndirs"], chunk_size=meta["ipca_batch_size"])
    reference = fx.outputs["pca_components"]
    signs = np.sign(np.sum(basis.components * reference, axis=1, keepdims=True))
    gap = np.max(np.abs(basis.components * signs - reference))
    assert gap == pytest.approx(meta["ipca_vs_exact_svd_max_abs_diff_sign_aligned"], abs=1e-5)
    assert_close(basis.mean, fx.outputs["pca_mean"], atol=1e-5, name="mean")


def _one_shot_pca(x, k):
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, s[:k], vt[:k]


def _correlated_samples(rng, n, dim, offset=5.0):
    scales = 0.8 ** np.arange(dim)
    return rng.normal(size=(n, dim)) @ (rng.normal(size=(dim, dim)) * scales[:, None]) + offset


def test_chunked_exact_pca_equals_one_shot_svd():
    rng = np.random.default_rng(3)
    x = _correlated_samples(rng, 700, 12)
    mean, s, vt = _one_shot_pca(x, 4)
    uneven = [x[:5], x[5:300], x[300:301], x[301:]]
    for samples, chunk_size in [(x, 64), (x, 700), (x, 10_000), (iter(uneven), 64)]:
        basis = exact_pca(samples, 4, chunk_size=chunk_size)
        signs = np.sign(np.sum(basis.components * vt, axis=1, keepdims=True))
        np.testing.assert_allclose(basis.components * signs, vt, atol=1e-10)
        np.testing.assert_allclose(basis.mean, mean, atol=1e-12)
        np.testing.assert_allclose(basis.singular_values, s, rtol=1e-10)
        np.testing.assert_allclose(basis.explained_variance, s**2 / (len(x) - 1), rtol=1e-10)
    # Device chunks are reduced in float32 and accumulated in float64.
    on_device = exact_pca(jnp.asarray(x, jnp.float32), 4, chunk_size=128)
    signs = np.sign(np.sum(on_device.components * vt, axis=1, keepdims=True))
    np.testing.assert_allclose(on_device.components * signs, vt, atol=1e-4)
    np.testing.assert_allclose(on_device.singular_values, s, rtol=1e-5)


def test_pca_directions_are_orthonormal_and_oriented():
    rng = np.random.default_rng(4)
    x = _correlated_samples(rng, 900, 16)
    for basis in (incremental_pca(x, 6, batch_size=80), exact_pca(x, 6, chunk_size=100)):
        gram = basis.components @ basis.components.T
        np.testing.assert_allclose(gram, np.eye(6), atol=1e-12)
        rows = np.arange(6)
        largest = basis.components[rows, np.argmax(np.abs(basis.components), axis=1)]
        assert np.all(largest > 0)
        assert np.all(np.diff(basis.explained_variance) <= 0)
    # Exact PCA: the encoded coordinates have exactly the explained variances.
    encoded = basis.encode(x)
    np.testing.assert_allclose(encoded.var(axis=0, ddof=1), basis.explained_variance, rtol=1e-8)


def test_incremental_pca_is_exact_for_one_batch_and_for_low_rank_data():
    rng = np.random.default_rng(5)
    x = _correlated_samples(rng, 300, 10)
    one_batch = incremental_pca(x, 3, batch_size=300)
    exact = exact_pca(x, 3)
    np.testing.assert_allclose(one_batch.components, exact.components, atol=1e-10)
    np.testing.assert_allclose(one_batch.singular_values, exact.singular_values, rtol=1e-10)
    # With data of rank k the merged basis loses nothing, whatever the batching (including a
    # short final batch of 3 < k samples that the rule folds into the previous one).
    low_rank = rng.normal(size=(503, 3)) @ rng.normal(size=(3, 10)) + 2.0
    merged = incremental_pca(low_rank, 3, batch_size=50)
    exact = exact_pca(low_rank, 3)
    np.testing.assert_allclose(merged.components, exact.components, atol=1e-8)
    np.testing.assert_allclose(merged.explained_variance, exact.explained_variance, rtol=1e-8)
    np.testing.assert_allclose(merged.mean, low_rank.mean(axis=0), atol=1e-12)


def test_mix_latents_properties():
    rng = np.random.default_rng(6)
    batch, heads, ndirs, dim, inject, n_latent = 3, 2, 4, 8, 2, 5
    w = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
    directions = jnp.asarray(rng.normal(size=(ndirs, dim)), jnp.float32)
    lat_mean = jnp.asarray(rng.normal(size=(1, dim)), jnp.float32)
    coefficients = jnp.asarray(rng.normal(size=(heads, ndirs)), jnp.float32)
    mix = jax.jit(mix_latents, static_argnums=(5, 6))

    kept = mix(w, directions, lat_mean, coefficients, 1.0, inject, n_latent)
    np.testing.assert_array_equal(
        kept, jnp.broadcast_to(jnp.repeat(w, heads, 0)[:, None], kept.shape)
    )

    target = mix(w, directions, lat_mean, coefficients, 0.0, inject, n_latent)
    heads_target = lat_mean + coefficients @ directions  # (K, D)
    assert_close(
        target[:, :inject],
        np.tile(heads_target, (batch, 1))[:, None].repeat(inject, 1),
        atol=1e-5,
        name="targets",
    )
    np.testing.assert_array_equal(target[:, inject:], kept[:, inject:])

    # lerp's two branches meet: psi just below and at 0.5 give (nearly) the same latents.
    below = mix(w, directions, lat_mean, coefficients, 0.5 - 1e-7, inject, n_latent)
    half = mix(w, directions, lat_mean, coefficients, 0.5, inject, n_latent)
    assert_close(below, half, atol=1e-5, name="branches")
    np.testing.assert_array_equal(torch_lerp(jnp.float32(2.0), jnp.float32(7.0), 1.0), 7.0)

    with pytest.raises(ValueError):
        mix_latents(w[:, None], directions, lat_mean, coefficients, 0.5, inject, n_latent)
