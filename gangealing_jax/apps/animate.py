"""An animation of images moving from their input pose into the congealed pose.

    python -m gangealing_jax.apps.animate --model runs/cat --data data/cat|image_folder
        --out anim.gif|anim.mp4|frame_folder [--frames 30] [--fps 15] [--n_images 16]
        [--edit edit.png] [--flips] [--hold 15]

Frame t samples each image with lerp(identity, congealing grid, alpha_t), alpha going 0 -> 1 on
a cosine ease over --frames steps: the STN's `alpha`, applied to the grid at the output
resolution. (The STN lerps its flow-resolution grid before resizing it; the two agree except on
the outermost ring of pixels, where this keeps frame 0 exactly the input.) Frame 0 is the input
and the last frame the congealed image. With --edit, the edit is first propagated into the
images (apps.propagate) and moves with them. Mirrored images (--flips) swing through the mirror.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np

from gangealing_jax.apps.congeal import BatchRunner, to_signed, with_overrides
from gangealing_jax.apps.model import AlignmentModel, load_model, stn_input
from gangealing_jax.apps.propagate import (
    edit_points,
    input_batches,
    load_edit,
    make_propagator,
)
from gangealing_jax.apps.routing import route
from gangealing_jax.apps.video import FrameWriter
from gangealing_jax.data import image_io
from gangealing_jax.errors import ConfigError, entry_point
from gangealing_jax.models.stn_heads import warp_image
from gangealing_jax.ops.sampling import identity_grid, lerp
from gangealing_jax.training.metrics_log import image_grid


def eased_alphas(frames: int) -> np.ndarray:
    """(frames,) from 0 to 1 on a cosine ease (slow start and end), as the reference's videos."""
    if frames < 2:
        raise ConfigError(f"an animation needs at least 2 frames, got {frames}")
    steps = np.arange(frames) / (frames - 1)
    return (0.5 - 0.5 * np.cos(math.pi * steps)).astype(np.float32)


def congealing_grid(model: AlignmentModel, images, *, resolution: int, flips: bool, cluster):
    """(N, R, R, 2) sampling grid into the images as given (mirroring folded into the grid)."""
    chosen = route(model, to_signed(images), flips=flips, cluster=cluster)
    inputs, flipped = chosen.inputs, chosen.flipped
    out = model.congeal(
        stn_input(inputs, model.flow_size), inputs, output_resolution=resolution,
        heads=chosen.heads,
    )  # fmt: skip
    unmirrored = out.grid * jnp.array([-1.0, 1.0], out.grid.dtype)
    return jnp.where(flipped[:, None, None, None], unmirrored, out.grid)


def partial_warp(model: AlignmentModel, images, grid, alpha):
    """Images (N, S, S, 3) uint8 sampled with lerp(identity, grid, alpha (N,)) -> [-1, 1]."""
    config = model.stn.config
    identity = identity_grid(grid.shape[1], grid.shape[2], grid.dtype)
    grid_t = lerp(identity, grid, alpha[:, None, None, None])
    return warp_image(
        to_signed(images), grid_t, model.test_time["padding_mode"], config.antialias,
        config.max_mipmap_levels,
    )  # fmt: skip


def animation_frames(
    model: AlignmentModel,
    images_uint8: np.ndarray,
    *,
    frames: int = 30,
    output_resolution: int | None = None,
    flips: bool | None = None,
    cluster: int | None = None,
    edit_rgba: np.ndarray | None = None,
    sigma: float = 1.3,
    opacity: float = 1.0,
    batch_size: int = 16,
    mesh=None,
) -> Iterator[np.ndarray]:
    """Yields `frames` arrays (N, R, R, 3) in [-1, 1], R = output_resolution (default: the
    images' side). images_uint8: (N, S, S, 3); edit_rgba: optional edit drawn over them."""
    flips = bool(model.test_time.get("flips", False)) if flips is None else flips
    images = np.asarray(images_uint8)
    resolution = output_resolution or images.shape[1]
    if edit_rgba is not None:  # the propagated edit moves with the pixels it was drawn on
        propagator = make_propagator(
            model, edit_points(edit_rgba), sigma=sigma, opacity=opacity, flips=flips,
            cluster=cluster, batch_size=batch_size, mesh=mesh,
        )  # fmt: skip
        starts = propagator.starts(len(images))
        images = np.concatenate(
            [propagator(images[s : s + propagator.batch_size]).composited for s in starts]
        )
    grids = BatchRunner(
        lambda w, x: congealing_grid(
            model.with_weights(w), x, resolution=resolution, flips=flips, cluster=cluster
        ),
        model.weights,
        mesh=mesh,
        batch_size=batch_size,
    )
    grid = np.concatenate(
        [grids(images[s : s + grids.batch_size]) for s in grids.starts(len(images))]
    )
    warp = BatchRunner(
        lambda _, x, g, a: partial_warp(model, x, g, a), None, mesh=mesh, batch_size=batch_size
    )
    for alpha in eased_alphas(frames):
        chunks = []
        for s in warp.starts(len(images)):
            rows = slice(s, s + warp.batch_size)
            alphas = np.full(len(images[rows]), alpha, np.float32)
            chunks.append(warp(images[rows], grid[rows], alphas))
        yield np.concatenate(chunks)


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="work directory, model bundle or .pt")
    add("--data", required=True, help="prepared dataset or image folder")
    add("--out", required=True, help="output .gif, video file or frame folder")
    add("--frames", type=int, default=30, help="frames from input to congealed pose")
    add("--fps", type=float, default=15.0)
    add("--hold", type=int, default=10, help="extra copies of the last frame")
    add("--n_images", type=int, default=16, help="images shown side by side")
    add("--indices", type=int, nargs="+", default=None, help="prepared-dataset items to use")
    add("--nrow", type=int, default=None, help="images per row (default: square grid)")
    add("--output_resolution", type=int, default=None, help="default: the images' size")
    add("--edit", default=None, help="RGBA edit drawn on the congealed average, shown moving")
    add("--sigma", type=float, default=1.3)
    add("--opacity", type=float, default=1.0)
    add("--flips", action="store_true", help="congeal x or mirror(x), whichever is smoother")
    add("--iters", type=int, default=None, help="similarity iterations")
    add("--cluster", type=int, default=None, help="head of a clustering model")
    add("--classifier", default=None, help="cluster classifier (default: found with the model)")
    add("--size", type=int, default=None, help="image folders: side (default: STN supersize)")
    add("--pad", choices=image_io.PAD_MODES, default="center", help="image folders: fitting")
    add("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    model = load_model(args.model, classifier=args.classifier)
    model = with_overrides(model, args.iters, args.flips)
    size = args.size or model.stn.config.supersize
    batches = input_batches(
        args.data, args.n_images, size=size, pad=args.pad, indices=args.indices, limit=args.n_images
    )
    _, images = next(batches, (None, None))
    if images is None:
        parser.error(f"{args.data} holds no readable images")
    frames = animation_frames(
        model, images, frames=args.frames, output_resolution=args.output_resolution,
        cluster=args.cluster, edit_rgba=None if args.edit is None else load_edit(args.edit),
        sigma=args.sigma, opacity=args.opacity, batch_size=args.batch,
    )  # fmt: skip
    with FrameWriter(args.out, args.fps) as writer:
        for frame in frames:
            writer.append(image_grid(frame, args.nrow))
        for _ in range(args.hold):
            writer.append(image_grid(frame, args.nrow))
    print(f"wrote {writer.count} frames of {len(images)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
