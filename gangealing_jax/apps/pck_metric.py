"""PCK-Transfer scoring: the fraction of transferred keypoints within alpha * threshold of the truth.

Protocols (both as the reference scores them):
- CUB: threshold = alpha * max(H, W) of the target image, pairs transferred both ways.
- SPair-71K: threshold = alpha * (resize scale * max bbox side) of the target image, one way.
A keypoint counts only where it is visible in both images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gangealing_jax.errors import InputFileError


def pair_counts(est, gt, threshold, alphas, visible) -> np.ndarray:
    """(N, len(alphas)) float64: per pair, the visible-weighted count of correct points per alpha."""
    err = np.linalg.norm(np.asarray(est, np.float32) - np.asarray(gt, np.float32)[..., :2], axis=-1)
    bound = np.asarray(alphas, np.float32)[None, None, :] * np.asarray(
        threshold, np.float32
    ).reshape(-1, 1, 1)
    hits = (err[..., None] <= bound).astype(np.float64)  # (N, P, A)
    return np.sum(hits * visible[..., None], axis=1)


def visibility(kps_a: np.ndarray, kps_b: np.ndarray) -> np.ndarray:
    """(N, P) mask of points visible in A and in B; all visible when no visibility column."""
    if kps_a.shape[-1] == 3:
        return np.asarray(kps_a[..., 2], np.float64) * np.asarray(kps_b[..., 2], np.float64)
    return np.ones(kps_a.shape[:2], np.float64)


@dataclasses.dataclass
class PCKAccumulator:
    """Sums correct and visible counts over batches (and hosts), then reports PCK per alpha."""

    alphas: Sequence[float]
    correct: np.ndarray = None
    visible: float = 0.0

    def __post_init__(self):
        if self.correct is None:
            self.correct = np.zeros(len(self.alphas), np.float64)

    def add(self, est_b, kps_a, kps_b, threshold_b, est_a=None, threshold_a=None) -> None:
        """One batch of pairs. est_*: (N, P, 2) pixel (x, y); kps_*: (N, P, 2|3); thresholds (N,)."""
        vis = visibility(np.asarray(kps_a), np.asarray(kps_b))
        self.correct += pair_counts(est_b, kps_b, threshold_b, self.alphas, vis).sum(axis=0)
        self.visible += float(vis.sum())
        if est_a is not None:
            self.correct += pair_counts(est_a, kps_a, threshold_a, self.alphas, vis).sum(axis=0)
            self.visible += float(vis.sum())

    def merge(self, other: PCKAccumulator) -> None:
        self.correct += other.correct
        self.visible += other.visible

    def result(self) -> np.ndarray:
        if self.visible == 0:
            raise InputFileError(
                "PCK is undefined: no keypoint was visible in both images of any pair"
            )
        return (self.correct / self.visible).astype(np.float32)


def image_threshold(height: int, width: int, batch: int) -> np.ndarray:
    """CUB protocol: max(H, W) of the image, per pair."""
    return np.full((batch,), max(height, width), np.float32)


def bbox_threshold(scale, max_bbox_side) -> np.ndarray:
    """SPair protocol: resize scale times the max bounding-box side in original pixels."""
    return np.asarray(scale, np.float32) * np.asarray(max_bbox_side, np.float32)
