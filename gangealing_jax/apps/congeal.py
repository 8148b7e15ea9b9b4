"""Congealing a prepared dataset with a trained STN, and writing an aligned, filtered copy of it.

    python -m gangealing_jax.apps.congeal --model runs/cat --data data/cat --out visuals/cat
        [--n_mean 500] [--flips] [--iters 3] [--output_resolution 256]
    python -m gangealing_jax.apps.congeal --model runs/cat --data data/cat --out data/cat_aligned
        --filter [--fraction_retained 0.9] [--min_effective_resolution 192] [--warp similarity]

The first form writes congealed_grid.png, input_grid.png, average.png / average.npy and the
per-image flow scores (flow_scores.npy / .json: negated total variation of the residual flow,
low = an image the STN struggles with). The second writes a prepared dataset of aligned images
as the reference's dataset pre-processing does (`apps.filter` says which images it keeps).
Batches are sharded over every device; only one batch of images is held in memory at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gangealing_jax.apps import points as point_ops
from gangealing_jax.apps.model import AlignmentModel, load_model, stn_input
from gangealing_jax.apps.routing import route
from gangealing_jax.data.prepared import PreparedDataset
from gangealing_jax.errors import entry_point
from gangealing_jax.training.metrics_log import image_grid, save_png
from gangealing_jax.training.parallel import batch_sharding, make_mesh, replicate


class BatchRunner:
    """`function(constants, *batch)` jitted over fixed-size batches sharded on the 'data' axis.

    `constants` (model variables, edit points, ...) are replicated once. A call takes host arrays
    of up to batch_size rows, pads them with copies of the last row to batch_size (a multiple of
    the device count) and returns the outputs as numpy arrays cut back to the given rows.
    """

    def __init__(self, function, constants, *, mesh=None, batch_size: int = 16):
        self.mesh = make_mesh() if mesh is None else mesh
        devices = self.mesh.devices.size
        self.batch_size = max(devices, -(-batch_size // devices) * devices)
        self._sharding = batch_sharding(self.mesh)
        self._constants = replicate(constants, self.mesh)
        self._run = jax.jit(function)

    def __call__(self, *arrays):
        count = len(arrays[0])
        if not 0 < count <= self.batch_size:
            raise ValueError(f"a batch holds 1..{self.batch_size} rows, got {count}")
        placed = []
        for array in arrays:
            array = np.asarray(array)
            padding = np.repeat(array[-1:], self.batch_size - count, axis=0)
            placed.append(jax.device_put(np.concatenate([array, padding]), self._sharding))
        out = self._run(self._constants, *placed)
        return jax.tree.map(lambda x: np.asarray(x)[:count], out)

    def starts(self, total: int) -> range:
        return range(0, total, self.batch_size)


def to_signed(images_uint8):
    return jnp.asarray(images_uint8).astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images):
    """[-1, 1] -> uint8, rounding as the reference's image writer does."""
    return jnp.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(jnp.uint8)


class Congealed(NamedTuple):
    image: jnp.ndarray  # (N, R, R, 3) congealed images in [-1, 1]
    flow_score: jnp.ndarray  # (N,) negated TV of the residual flow; 0 without a flow stage
    flipped: jnp.ndarray  # (N,) bool: the mirrored image was congealed
    head: jnp.ndarray  # (N,) int32 head that congealed the image (0 for a single-head model)


def congeal_batch(
    model: AlignmentModel,
    images,
    *,
    output_resolution: int | None = None,
    flips: bool = False,
    cluster: int | None = None,
) -> Congealed:
    """Congeal uint8 images (N, S, S, 3) at output_resolution (default S); heads and mirrors as
    `apps.routing` chooses them. Jit-compatible."""
    n = images.shape[0]
    chosen = route(model, to_signed(images), flips=flips, cluster=cluster)
    source = chosen.inputs
    out = model.congeal(
        stn_input(source, model.flow_size),
        source,
        output_resolution=output_resolution or source.shape[1],
        heads=chosen.heads,
    )
    score = jnp.zeros(n) if out.flow is None else point_ops.flow_scores(out.flow)
    head = jnp.zeros(n, jnp.int32) if chosen.heads is None else chosen.heads
    return Congealed(out.image, score, chosen.flipped, head)


class CongealSummary(NamedTuple):
    average: np.ndarray  # (R, R, 3) mean congealed image in [-1, 1]
    grid_images: np.ndarray  # (G, R, R, 3) the first congealed images
    flow_scores: np.ndarray | None  # (N,) per image; None without a flow stage
    flipped: np.ndarray  # (N,) bool
    heads: np.ndarray | None  # (N,) int32 head per image; None for a single-head model


def congeal_dataset(
    model: AlignmentModel,
    images,
    *,
    n_mean: int = 0,
    n_grid: int = 64,
    output_resolution: int | None = None,
    flips: bool | None = None,
    cluster: int | None = None,
    batch_size: int = 16,
    mesh=None,
    progress: bool = False,
) -> CongealSummary:
    """Congeal every image of `images` ((N, S, S, 3) uint8, e.g. a memory map); average the
    first n_mean (0: all). A clustering model congeals each image with the head its classifier
    predicts (or `cluster`); `heads` in the summary says which, to average one cluster alone."""
    flips = bool(model.test_time.get("flips", False)) if flips is None else flips
    options = dict(output_resolution=output_resolution, flips=flips, cluster=cluster)
    runner = BatchRunner(
        lambda w, x: congeal_batch(model.with_weights(w), x, **options),
        model.weights,
        mesh=mesh,
        batch_size=batch_size,
    )
    total = len(images)
    n_mean = total if n_mean <= 0 else min(n_mean, total)
    total_sum, shown, scores, flipped, heads = 0.0, [], [], [], []
    for start in tqdm(runner.starts(total), disable=not progress, desc="congealing"):
        out = runner(np.asarray(images[start : start + runner.batch_size]))
        averaged = out.image[: max(0, n_mean - start)]
        total_sum = total_sum + averaged.astype(np.float64).sum(axis=0)
        if start < n_grid:
            shown.append(out.image[: n_grid - start])
        scores.append(out.flow_score)
        flipped.append(out.flipped)
        heads.append(out.head)
    has_flow = model.stn.config.transforms[-1] == "flow"
    return CongealSummary(
        average=(total_sum / n_mean).astype(np.float32),
        grid_images=np.concatenate(shown),
        flow_scores=np.concatenate(scores) if has_flow else None,
        flipped=np.concatenate(flipped),
        heads=np.concatenate(heads) if model.stn.config.num_heads > 1 else None,
    )


def write_congeal_outputs(summary: CongealSummary, inputs: np.ndarray, out_dir) -> None:
    """PNG grids, the average (PNG and .npy), the flow scores (.npy and .json) and, for a
    clustering model, every image's head (heads.npy)."""
    os.makedirs(out_dir, exist_ok=True)
    save_png(image_grid(summary.grid_images), os.path.join(out_dir, "congealed_grid.png"))
    save_png(image_grid(inputs / 127.5 - 1.0), os.path.join(out_dir, "input_grid.png"))
    save_png(image_grid(summary.average[None], padding=0), os.path.join(out_dir, "average.png"))
    np.save(os.path.join(out_dir, "average.npy"), summary.average)
    if summary.heads is not None:
        np.save(os.path.join(out_dir, "heads.npy"), summary.heads)
    if summary.flow_scores is not None:
        np.save(os.path.join(out_dir, "flow_scores.npy"), summary.flow_scores)
        record = {"flow_scores": summary.flow_scores.tolist(), "flipped": summary.flipped.tolist()}
        with open(os.path.join(out_dir, "flow_scores.json"), "w") as f:
            json.dump(record, f)


def with_overrides(model: AlignmentModel, iters=None, flips=False) -> AlignmentModel:
    test_time = dict(model.test_time, flips=bool(flips or model.test_time.get("flips", False)))
    if iters is not None:
        test_time["iters"] = int(iters)
    return model._replace(test_time=test_time)


@entry_point
def main(argv=None) -> int:
    # Imported here: apps.filter builds on this module's batch runner.
    from gangealing_jax.apps import filter as filtering

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="work directory, model bundle or .pt")
    add("--data", required=True, help="prepared dataset")
    add("--out", required=True, help="output directory (with --filter: the new dataset)")
    add("--n_mean", type=int, default=0, help="images averaged (0: all)")
    add("--n_grid", type=int, default=64, help="images shown in congealed_grid.png")
    add("--output_resolution", type=int, default=None, help="default: the data's resolution")
    add("--flips", action="store_true", help="congeal x or mirror(x), whichever is smoother")
    add("--iters", type=int, default=None, help="similarity iterations")
    add("--cluster", type=int, default=None, help="head of a clustering model")
    add("--classifier", default=None, help="cluster classifier (default: found with the model)")
    add("--batch", type=int, default=16)
    add("--filter", action="store_true", help="write an aligned, filtered prepared dataset")
    add("--fraction_retained", type=float, default=1.0, help="best fraction by flow score")
    add("--min_effective_resolution", type=float, default=None, help="default: 0.75 x data res")
    add("--warp", choices=filtering.WARPS, default="similarity", help="stages warping kept images")
    add("--flow_scores", default=None, help="precomputed flow_scores.npy to rank by")
    args = parser.parse_args(argv)
    model = load_model(args.model, classifier=args.classifier)
    model = with_overrides(model, args.iters, args.flips)
    dataset = PreparedDataset(args.data)
    if args.filter:
        report = filtering.filter_dataset(
            model, dataset, args.out, fraction_retained=args.fraction_retained,
            min_effective_resolution=args.min_effective_resolution,
            output_resolution=args.output_resolution, warp=args.warp,
            flow_scores=None if args.flow_scores is None else np.load(args.flow_scores),
            batch_size=args.batch, progress=True,
        )  # fmt: skip
        summary = {k: v for k, v in report.to_dict().items() if k != "indices"}
        with open(os.path.join(args.out, "filter_report.json"), "w") as f:
            json.dump(report.to_dict(), f)
        print(json.dumps(summary, indent=2))
        return 0
    summary = congeal_dataset(
        model, dataset.images, n_mean=args.n_mean, n_grid=args.n_grid,
        output_resolution=args.output_resolution, cluster=args.cluster, batch_size=args.batch,
        progress=True,
    )  # fmt: skip
    write_congeal_outputs(summary, np.asarray(dataset.images[: args.n_grid]), args.out)
    print(f"congealed {len(dataset)} images into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
