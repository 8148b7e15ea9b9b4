"""Random poses of G(w); the pose-equivariance, mirror-equivariance and mirror-symmetry terms of
the objective."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gangealing_jax.losses.gangealing import Frozen, ObjectiveSettings, gangealing_objective
from gangealing_jax.losses.perceptual import multiscale_structural_distance
from gangealing_jax.losses.regularizers import mirror_equivariance_loss, pose_equivariance_loss
from gangealing_jax.models.stn import STN
from gangealing_jax.ops.sampling import affine_grid, compose_affine, similarity_matrix, to_3x3
from gangealing_jax.training.augment import PoseAugmentation, random_poses
from tests.tiny_models import perturbed, tiny_generator, tiny_objective_inputs, tiny_stn_config

AUG = PoseAugmentation(rotation_deg=30.0, log_scale=0.25, translation=0.2)


def _decompose(matrices):
    """(angle, scale, tx, ty) of similarity matrices [[s c, -s s, tx], [s s, s c, ty]]."""
    a, b = matrices[..., 0, 0], matrices[..., 1, 0]
    return np.arctan2(b, a), np.hypot(a, b), matrices[..., 0, 2], matrices[..., 1, 2]


def test_poses_stay_in_their_ranges_and_cover_them():
    matrices = np.asarray(random_poses(jax.random.PRNGKey(0), (4000,), AUG, 1.0), np.float64)
    angle, scale, tx, ty = _decompose(matrices)
    np.testing.assert_allclose(matrices[:, 0, 0], matrices[:, 1, 1], atol=1e-6)  # a similarity
    limit = math.radians(30.0)
    assert np.abs(angle).max() <= limit + 1e-5 and np.abs(angle).max() > 0.95 * limit
    log_scale = np.log(scale)
    assert np.abs(log_scale).max() <= 0.25 + 1e-5 and np.abs(log_scale).max() > 0.24
    for shift in (tx, ty):
        assert np.abs(shift).max() <= 0.2 + 1e-6 and np.abs(shift).max() > 0.19
        assert abs(shift.mean()) < 0.01  # symmetric about zero


def test_strength_scales_the_ranges_and_zero_is_the_identity():
    key = jax.random.PRNGKey(1)
    none = np.asarray(random_poses(key, (2, 3), AUG, 0.0))
    assert none.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(none, np.broadcast_to(np.eye(2, 3), none.shape), atol=1e-6)
    full = _decompose(np.asarray(random_poses(key, (500,), AUG, 1.0), np.float64))
    half = _decompose(np.asarray(random_poses(key, (500,), AUG, 0.5), np.float64))
    np.testing.assert_allclose(half[0], full[0] / 2, atol=1e-5)  # same draws, half the angle
    np.testing.assert_allclose(half[2], full[2] / 2, atol=1e-6)


def test_disabled_by_default_and_ranges_are_checked():
    assert not PoseAugmentation().enabled and AUG.enabled
    for bad in (-1.0, 180.0):  # a half-turn has no raw rotation parameter (arctanh(1))
        with pytest.raises(ValueError, match="rotation_deg"):
            PoseAugmentation(rotation_deg=bad)
    with pytest.raises(ValueError, match="log_scale"):
        PoseAugmentation(log_scale=-0.1)


def test_objective_sees_the_posed_generator_output_and_identity_poses_change_nothing():
    generator, stn, trainable, frozen, z = tiny_objective_inputs()
    settings = ObjectiveSettings(
        inject=3, tv_weight=10.0, equivariance_weight=2.0, symmetry_weight=0.5
    )

    @jax.jit
    def run(augment):
        return gangealing_objective(
            trainable, frozen, z, None, jnp.float32(0.0), multiscale_structural_distance,
            augment, generator=generator, stn=stn, settings=settings,
        )  # fmt: skip

    plain = run(None)
    identity = run(jnp.broadcast_to(jnp.eye(2, 3), (3, 2, 3)))
    np.testing.assert_allclose(identity.unaligned, plain.unaligned, atol=1e-5)
    np.testing.assert_allclose(identity.total, plain.total, rtol=1e-5)
    assert float(plain.equivariance) == 0.0 and float(identity.equivariance) < 1e-10
    # A half-turn: the STN (still the identity) now sees G(w) upside down.
    turned = run(jnp.broadcast_to(jnp.array([[-1.0, 0, 0], [0, -1.0, 0]]), (3, 2, 3)))
    np.testing.assert_allclose(turned.unaligned, plain.unaligned[:, ::-1, ::-1], atol=1e-5)
    np.testing.assert_allclose(turned.target, plain.target, atol=1e-6)  # the target stays put
    assert float(turned.perceptual) > float(plain.perceptual)
    # The identity STN ignores the half-turn: E = -I misses every output point p by 2|p|.
    np.testing.assert_allclose(float(turned.equivariance), 4 * 2 / 3, rtol=1e-5)
    mirrored = multiscale_structural_distance(
        turned.aligned_pred, jnp.flip(turned.aligned_pred, axis=2)
    )
    np.testing.assert_allclose(turned.symmetry, jnp.mean(mirrored), rtol=1e-5)
    assert float(turned.symmetry) > 0
    expected = (
        turned.perceptual
        + 10.0 * turned.tv
        + turned.identity
        + 2.0 * turned.equivariance
        + 0.5 * turned.symmetry
    )
    np.testing.assert_allclose(turned.total, expected, rtol=1e-6)


def test_equivariance_over_every_kth_image_is_that_of_those_images_alone():
    generator, stn, trainable, frozen, z = tiny_objective_inputs()
    trainable = {**trainable, "stn": perturbed(trainable["stn"], jax.random.PRNGKey(8), 0.05)}
    poses = random_poses(jax.random.PRNGKey(9), (3,), AUG, 1.0)

    @functools.partial(jax.jit, static_argnums=2)
    def equivariance_term(z, poses, every):
        settings = ObjectiveSettings(inject=3, equivariance_weight=2.0, equivariance_every=every)
        return gangealing_objective(
            trainable, frozen, z, None, jnp.float32(0.0), multiscale_structural_distance,
            poses, generator=generator, stn=stn, settings=settings,
        ).equivariance  # fmt: skip

    def equivariance(z, poses, every):
        return float(equivariance_term(z, poses, every))

    every_other = equivariance(z, poses, 2)  # images 0 and 2 congealed again
    assert every_other > 1e-4  # the perturbed STN is not pose-equivariant
    np.testing.assert_allclose(every_other, equivariance(z[::2], poses[::2], 1), rtol=1e-5)
    assert abs(every_other - equivariance(z, poses, 1)) > 1e-3 * every_other  # not all three
    assert abs(every_other - equivariance(z[:2], poses[:2], 1)) > 1e-3 * every_other  # no prefix


def test_pose_equivariance_is_zero_exactly_when_the_pose_is_undone():
    key_m, key_t = jax.random.split(jax.random.PRNGKey(5))
    congeal = random_poses(key_m, (4,), AUG, 1.0)  # (4, 2, 3) how the plain images are congealed
    poses = random_poses(key_t, (4,), AUG, 1.0)
    inverse = jnp.linalg.inv(to_3x3(poses))[:, :2]
    undone = compose_affine(inverse, congeal)  # T^-1 M: what a perfect STN predicts for T x
    assert float(pose_equivariance_loss(undone, congeal, poses)) < 1e-10
    ignored = float(pose_equivariance_loss(congeal, congeal, poses))  # an STN blind to the pose
    assert ignored > 1e-3
    # The closed form is the mean over output points of |E p - p|^2, E = M^-1 T M'.
    error = jnp.linalg.inv(to_3x3(congeal)) @ to_3x3(compose_affine(poses, congeal))
    grid = affine_grid(jnp.eye(2, 3)[None], (64, 64)).reshape(-1, 2)
    points = jnp.concatenate([grid, jnp.ones((grid.shape[0], 1))], axis=1)
    moved = jnp.einsum("nij,pj->npi", error[:, :2], points)
    np.testing.assert_allclose(
        ignored, float(jnp.mean(jnp.sum((moved - grid) ** 2, -1))), rtol=2e-3
    )
    # Zooming both congealings into a point does not make them agree.
    zoom = jnp.diag(jnp.array([0.01, 0.01, 1.0]))
    tiny = to_3x3(congeal) @ zoom
    tiny_posed = to_3x3(compose_affine(inverse, congeal)) @ zoom
    assert float(pose_equivariance_loss(tiny_posed[:, :2], tiny[:, :2], poses)) < 1e-8
    assert float(pose_equivariance_loss(tiny[:, :2], tiny[:, :2], poses)) > ignored


def test_mirror_equivariance_is_zero_exactly_for_the_mirrored_congealing():
    rot, scale, tx, ty = (jnp.array(v) for v in ([0.1, -0.3], [0.2, -0.1], [0.1, 0.3], [-0.2, 0.0]))
    congeal = similarity_matrix(rot, scale, tx, ty)
    mirrored = similarity_matrix(-rot, scale, -tx, ty)  # S M S with S = diag(-1, 1)
    assert float(mirror_equivariance_loss(mirrored, congeal)) < 1e-10
    # The mirror's congealing keeps the tilt (or the sideways shift) of the image's: not a mirror.
    same_tilt = similarity_matrix(rot, scale, -tx, ty)
    same_shift = similarity_matrix(-rot, scale, tx, ty)
    assert float(mirror_equivariance_loss(same_tilt, congeal)) > 1e-2
    assert float(mirror_equivariance_loss(same_shift, congeal)) > 1e-2
    # The identity STN is mirror-equivariant.
    eye = jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3))
    assert float(mirror_equivariance_loss(eye, eye)) == 0.0


@pytest.mark.parametrize("flips", [False, True])
def test_objective_mirror_term_congeals_the_mirrored_generator_output(flips):
    generator, gvars = tiny_generator(size=16, style_dim=16, channels=8)
    stn = STN(tiny_stn_config(flow_size=16, supersize=16))
    stn_vars = stn.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    stn_vars = perturbed(stn_vars, jax.random.PRNGKey(7), 0.05)  # no longer the identity warp
    d = generator.config.style_dim
    frozen = Frozen(gvars, jnp.eye(2, d), jnp.zeros((1, d)))
    trainable = {"stn": stn_vars, "congealing": {"coefficients": jnp.full((1, 2), 0.1)}}
    z = jax.random.normal(jax.random.PRNGKey(4), (3, d))
    settings = ObjectiveSettings(inject=3, tv_weight=0.0, flips=flips, mirror_weight=3.0)
    terms = jax.jit(
        lambda: gangealing_objective(
            trainable, frozen, z, None, jnp.float32(0.0), multiscale_structural_distance,
            generator=generator, stn=stn, settings=settings,
        )
    )()  # fmt: skip

    def matrix(images):
        return stn.apply(stn_vars, images, padding_mode=settings.padding_mode).matrix

    unaligned = terms.unaligned
    expected = mirror_equivariance_loss(matrix(jnp.flip(unaligned, axis=2)), matrix(unaligned))
    assert float(expected) > 1e-6
    np.testing.assert_allclose(terms.mirror, expected, rtol=1e-4)
    np.testing.assert_allclose(
        terms.total, terms.perceptual + terms.identity + 3.0 * terms.mirror, rtol=1e-5
    )
