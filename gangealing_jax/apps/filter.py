"""Writing an aligned, filtered copy of a prepared dataset, as the reference's dataset
pre-processing does (run it with `python -m gangealing_jax.apps.congeal ... --filter`).

Keep the best `fraction_retained` by flow score, drop images whose warp samples beyond the image
(more than 2.5% of the output) and images whose aligned crop covers fewer than
`min_effective_resolution` source pixels (similarity scale x source size). By default only the
similarity stage warps the kept images (no flow artifacts). Keypoints and boxes are carried into
the aligned frame; dataset_indices.npy lists the sources.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gangealing_jax.apps import points as point_ops
from gangealing_jax.apps.congeal import BatchRunner, to_signed, to_uint8
from gangealing_jax.apps.model import AlignmentModel, stn_input
from gangealing_jax.apps.routing import route
from gangealing_jax.data.prepared import PreparedDataset, PreparedWriter
from gangealing_jax.errors import ConfigError, InputFileError
from gangealing_jax.models.stn import STN
from gangealing_jax.ops.sampling import unnormalize_points

WARPS = ("similarity", "full")
OUT_OF_BOUNDS_THRESHOLD = 0.025  # fraction of output samples allowed outside the image


def similarity_stage(model: AlignmentModel) -> AlignmentModel:
    """The model's first (similarity) stage alone: rotation, zoom and shift, no dense warp."""
    config = model.stn.config
    if config.transforms[0] != "similarity":
        raise ConfigError("--warp similarity needs an STN whose first stage is a similarity")
    if len(config.transforms) == 1:
        return model
    stn = STN(dataclasses.replace(config, transforms=("similarity",)), policy=model.policy)
    params = {"stns_0": model.variables["params"]["stns_0"]}
    return model._replace(stn=stn, variables={**model.variables, "params": params})


def retained_by_score(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted indices of the round(fraction * N) best scores (ties keep the lower index)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction_retained must be in (0, 1], got {fraction}")
    keep = max(1, int(round(fraction * len(scores))))
    return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:keep])


def _output_pixels(out, points, source_size: int, resolution: int):
    """Source pixel points (N, P, 2) -> pixels of the congealed image at `resolution`."""
    mapped = point_ops.congealed_points_from_output(out, points, source_size)
    if out.flow is None:  # normalised coordinates
        return unnormalize_points(mapped, resolution, resolution)
    cells = out.flow.shape[1]  # integer positions on the flow grid -> their pixel centres
    return (mapped.astype(jnp.float32) + 0.5) * (resolution / cells) - 0.5


class FilterBatch(NamedTuple):
    image: jnp.ndarray  # (N, R, R, 3) uint8 aligned image
    keypoints: jnp.ndarray  # (N, P, 3) in the aligned image; points outside it turn invisible
    bboxes: jnp.ndarray  # (N, 4) box around the mapped corners, clipped to the image
    flow_score: jnp.ndarray  # (N,)
    out_of_bounds: jnp.ndarray  # (N,) bool
    effective_resolution: jnp.ndarray  # (N,) similarity scale x source size


def filter_batch(model, warp_model, images, keypoints, bboxes, *, permutation, resolution, flips):
    source = to_signed(images)
    size = source.shape[2]
    chosen = route(model, source, flips=flips)
    source, flipped = chosen.inputs, chosen.flipped
    small = stn_input(source, model.flow_size)
    full = model.congeal(small, source)
    n = source.shape[0]
    score = jnp.zeros(n) if full.flow is None else point_ops.flow_scores(full.flow)
    out = warp_model.congeal(small, source, output_resolution=resolution)
    scale = jnp.ones(n) if out.matrix is None else point_ops.similarity_scale(out.matrix)
    # Annotations of mirrored images are mirrored too, left/right labels swapped.
    kps = jnp.asarray(keypoints)
    mirrored = kps.at[..., 0].set(size - 1 - kps[..., 0])[:, jnp.asarray(permutation)]
    kps = jnp.where(flipped[:, None, None], mirrored, kps)
    x0, y0, x1, y1 = (bboxes[:, i] for i in range(4))
    x0, x1 = jnp.where(flipped, size - 1 - x1, x0), jnp.where(flipped, size - 1 - x0, x1)
    corners = jnp.stack([jnp.stack(c, -1) for c in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))], 1)
    mapped = _output_pixels(out, jnp.concatenate([kps[..., :2], corners], 1), size, resolution)
    points, corners = mapped[:, : kps.shape[1]], mapped[:, kps.shape[1] :]
    inside = jnp.all((points >= 0) & (points <= resolution - 1), axis=-1)
    kps = jnp.concatenate([points, kps[..., 2:] * inside[..., None]], axis=-1)
    boxes = jnp.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=-1)
    return FilterBatch(
        image=to_uint8(out.image),
        keypoints=kps,
        bboxes=jnp.clip(boxes, 0, resolution - 1),
        flow_score=score,
        out_of_bounds=point_ops.warp_exceeds_bounds(out.grid, None, OUT_OF_BOUNDS_THRESHOLD),
        effective_resolution=scale * size,
    )


class FilterReport(NamedTuple):
    total: int  # images in the input dataset
    kept_by_score: int  # after --fraction_retained
    out_of_bounds: int  # of those, rejected for sampling beyond the image
    low_resolution: int  # of those, rejected below min_effective_resolution (and in bounds)
    written: int  # images in the filtered dataset
    indices: np.ndarray  # (written,) source indices, ascending

    def to_dict(self) -> dict:
        return {**self._asdict(), "indices": self.indices.tolist()}


def filter_dataset(
    model: AlignmentModel,
    dataset: PreparedDataset,
    out_path: str,
    *,
    fraction_retained: float = 1.0,
    min_effective_resolution: float | None = None,
    output_resolution: int | None = None,
    warp: str = "similarity",
    flow_scores: np.ndarray | None = None,
    flips: bool | None = None,
    batch_size: int = 16,
    mesh=None,
    progress: bool = False,
) -> FilterReport:
    """Write the aligned, filtered copy of `dataset` to `out_path` (see the module docstring).

    min_effective_resolution defaults to 0.75 x the dataset's resolution (192 at 256 px, the
    reference's default). flow_scores: precomputed (N,) scores instead of this model's.
    """
    if warp not in WARPS:
        raise ConfigError(f"warp must be one of {WARPS}, got {warp!r}")
    if model.stn.config.num_heads != 1:
        raise ConfigError("dataset filtering supports single-head (unimodal) models only")
    flips = bool(model.test_time.get("flips", False)) if flips is None else flips
    resolution = output_resolution or dataset.resolution
    minimum = min_effective_resolution
    minimum = 0.75 * dataset.resolution if minimum is None else float(minimum)
    warp_model = similarity_stage(model) if warp == "similarity" else model

    def run(variables, images, keypoints, bboxes):
        full, part = variables
        return filter_batch(
            model._replace(variables=full), warp_model._replace(variables=part), images,
            keypoints, bboxes, permutation=dataset.flip_permutation, resolution=resolution,
            flips=flips,
        )  # fmt: skip

    runner = BatchRunner(
        run, (model.variables, warp_model.variables), mesh=mesh, batch_size=batch_size
    )

    def batches(indices, desc):
        for start in tqdm(runner.starts(len(indices)), disable=not progress, desc=desc):
            chunk = indices[start : start + runner.batch_size]
            arrays = (dataset.images[chunk], dataset.keypoints[chunk], dataset.bboxes[chunk])
            yield start, runner(*(np.asarray(a) for a in arrays))

    scores, oob, effective = [], [], []  # pass 1: scores and checks only, images discarded
    for *_, out in batches(np.arange(len(dataset)), "scoring"):
        scores.append(out.flow_score)
        oob.append(out.out_of_bounds)
        effective.append(out.effective_resolution)
    scores, oob, effective = np.concatenate(scores), np.concatenate(oob), np.concatenate(effective)
    if flow_scores is None:
        if model.stn.config.transforms[-1] != "flow" and fraction_retained < 1.0:
            raise ConfigError("fraction_retained < 1 ranks flow scores: the STN has no flow stage")
        flow_scores = scores
    if len(flow_scores) != len(dataset):
        raise InputFileError(f"{len(flow_scores)} flow scores for {len(dataset)} images")
    by_score = retained_by_score(flow_scores, fraction_retained)
    low = effective[by_score] < minimum
    rejected_oob = oob[by_score]
    kept = by_score[~rejected_oob & ~low]
    if len(kept) == 0:
        raise ConfigError(
            f"no image passed the filters ({int(rejected_oob.sum())} out of bounds, "
            f"{int((low & ~rejected_oob).sum())} below {minimum:g} px); "
            "lower --min_effective_resolution or raise --fraction_retained"
        )
    meta = {"filtered_from": os.path.abspath(dataset.path), "warp": warp}
    meta.update(fraction_retained=fraction_retained, min_effective_resolution=minimum)
    writer = PreparedWriter(
        out_path, len(kept), resolution, dataset.keypoint_names, dataset.flip_permutation,
        source="congealed", extra_meta=meta,
    )  # fmt: skip
    for start, out in batches(kept, "writing"):  # pass 2: the kept images
        writer.write(start, out.image, out.keypoints, out.bboxes)
    position = np.full(len(dataset), -1)
    position[kept] = np.arange(len(kept))
    pairs = position[np.asarray(dataset.pairs)].reshape(-1, 2)
    writer.finish(pairs[(pairs >= 0).all(axis=1)])
    np.save(os.path.join(out_path, "dataset_indices.npy"), kept)
    np.save(os.path.join(out_path, "flow_scores.npy"), np.asarray(flow_scores, np.float32))
    low = int((low & ~rejected_oob).sum())
    oob = int(rejected_oob.sum())
    return FilterReport(len(dataset), len(by_score), oob, low, len(kept), kept)
