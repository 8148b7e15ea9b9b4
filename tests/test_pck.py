"""PCK-Transfer scoring against the reference fixtures, and its edge cases."""

import numpy as np
import pytest

from gangealing_jax.apps.pck_metric import PCKAccumulator, bbox_threshold, image_threshold
from tests.golden import golden_cases, load_fixture


@pytest.mark.parametrize("path", golden_cases("pck"))
def test_pck_golden(path):
    fx = load_fixture(path)
    alphas = fx.meta["alphas"]
    i = fx.inputs
    n = i["kpsA"].shape[0]
    h, w = (int(v) for v in i["img_hw"])
    thresholds = {
        "cub": (image_threshold(h, w, n), image_threshold(h, w, n)),
        "spair": (
            bbox_threshold(i["scaleB"], i["threshB"]),
            bbox_threshold(i["scaleA"], i["threshA"]),
        ),
    }
    for protocol, (thr_b, thr_a) in thresholds.items():
        for mode in ("a2b", "both"):
            acc = PCKAccumulator(alphas)
            if mode == "both":
                acc.add(i["est_kpsB"], i["kpsA"], i["kpsB"], thr_b, i["est_kpsA"], thr_a)
            else:
                acc.add(i["est_kpsB"], i["kpsA"], i["kpsB"], thr_b)
            expected = fx.outputs[f"pck_{protocol}_{mode}"]
            np.testing.assert_allclose(
                acc.result(), expected, rtol=1e-6, err_msg=f"{protocol}_{mode}"
            )


def test_pck_batches_merge_and_invisible_points():
    rng = np.random.default_rng(0)
    kps_a = np.concatenate([rng.uniform(0, 64, (6, 5, 2)), np.ones((6, 5, 1))], -1)
    kps_b = kps_a.copy()
    kps_b[:, 0, 2] = 0  # point 0 invisible in B: never counted
    est = kps_b[..., :2] + 3.0
    est[:, 0] += 1000.0
    whole = PCKAccumulator([0.1, 0.05])
    whole.add(est, kps_a, kps_b, image_threshold(64, 64, 6))
    parts = PCKAccumulator([0.1, 0.05])
    for lo in (0, 3):
        part = PCKAccumulator([0.1, 0.05])
        part.add(
            est[lo : lo + 3], kps_a[lo : lo + 3], kps_b[lo : lo + 3], image_threshold(64, 64, 3)
        )
        parts.merge(part)
    # error 3*sqrt(2) = 4.24 px: within 6.4 px, not within 3.2 px
    np.testing.assert_allclose(whole.result(), [1.0, 0.0])
    np.testing.assert_allclose(parts.result(), whole.result())
    with pytest.raises(ValueError, match="no keypoint"):
        PCKAccumulator([0.1]).result()
