"""The pose-residual benchmark's reading of an STN matrix against a face's known pose."""

import numpy as np
import pytest

from benchmarks.pose_residuals import MIRROR, pose_matrix, residual_and_pose
from gangealing_jax.data.procedural import Pose


@pytest.mark.parametrize("flip", [False, True])
def test_an_stn_that_undoes_the_pose_leaves_nothing_and_the_identity_leaves_all(flip):
    pose = Pose(angle=np.radians(20.0), scale=0.9, tx=0.1, ty=-0.05, flip=flip)
    perfect = pose_matrix(pose)[:2]  # congealed (= canonical) -> image
    if flip:  # a similarity cannot unmirror: the best maps the mirrored canonical face
        perfect = (MIRROR @ pose_matrix(pose) @ MIRROR)[:2]
    residual, placed = residual_and_pose(perfect, pose)
    np.testing.assert_allclose(residual, 0.0, atol=1e-9)
    np.testing.assert_allclose(
        placed, [(-1 if flip else 1) * 20.0, np.log(0.9), (-1 if flip else 1) * 0.1, -0.05]
    )
    residual, _ = residual_and_pose(np.eye(2, 3), pose)  # the identity warp leaves the pose
    np.testing.assert_allclose(residual[0], -placed[0], atol=1e-9)
    np.testing.assert_allclose(residual[1], -placed[1], atol=1e-9)
    # Half the turn undone leaves minus half of it, whichever way the face is mirrored.
    half = np.radians(placed[0] / 2)
    turn = np.array([[np.cos(half), -np.sin(half), 0.0], [np.sin(half), np.cos(half), 0.0]])
    residual, _ = residual_and_pose(turn, pose)
    np.testing.assert_allclose(residual[0], -placed[0] / 2, atol=1e-9)
