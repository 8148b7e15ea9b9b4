"""Edit propagation: an RGBA edit drawn on the congealed average, carried into every image.

    python -m gangealing_jax.apps.propagate --model runs/cat --data data/cat|image_folder
        --edit edit.png --out visuals/edit [--sigma 1.3] [--opacity 1] [--blend laplacian]
        [--dense_tracking] [--save_points] [--indices 3 7 9] [--flips]

The edit's pixels with alpha > 0 are points in congealed space (the edit's side is the congealed
resolution). The STN's sampling grid at that resolution says where each lands in an image; the
points' colours and alphas are splatted there with a Gaussian (as the reference's Splat2D: peak
weight 1, window 2 sigma, colours averaged, alpha divided by max(weight, 1)) and composited over
the image, by alpha or by Laplacian-pyramid blending. --dense_tracking propagates a fixed colour
pattern covering the congealed grid instead of an edit. --save_points writes points.npy
(N, P, 2): the edit pixels' (x, y) in every image, rows in input order; edit_points.npy holds the
P edit pixels.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from gangealing_jax.apps import points as point_ops
from gangealing_jax.apps.congeal import BatchRunner, to_signed, to_uint8, with_overrides
from gangealing_jax.apps.model import AlignmentModel, load_model, stn_input
from gangealing_jax.apps.routing import route
from gangealing_jax.data import image_io, sources
from gangealing_jax.data.prepared import PreparedDataset
from gangealing_jax.errors import ConfigError, InputFileError, entry_point
from gangealing_jax.ops.sampling import normalize_points
from gangealing_jax.ops.splat import normalize_splat, splat_points
from gangealing_jax.training.metrics_log import image_grid, save_png

# levels, Gaussian kernel width, sigma of the first level (doubling per level), as the reference
BLENDS = {"alpha": None, "laplacian": (5, 45, 1.0), "laplacian_light": (3, 11, 0.5)}
GRID_IMAGES = 64  # images shown in the PNG grids
SPLAT_TRUNCATE = 2.0  # the reference's window: 2 sigma either side


def _gaussian_taps(width: int, sigma: float) -> np.ndarray:
    offsets = np.arange(width) - (width - 1) / 2
    taps = np.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


def _blur(images, taps: np.ndarray):
    """Separable Gaussian blur of NHWC images, edge pixels replicated (same size out)."""
    channels, width = images.shape[-1], len(taps)
    pad = width // 2
    x = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    column = jnp.tile(jnp.asarray(taps, x.dtype).reshape(width, 1, 1, 1), (1, 1, 1, channels))
    for kernel in (column, column.reshape(1, width, 1, channels)):
        x = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels, precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
    return x


def _lerp(start, end, weight):
    return start + weight * (end - start)


def laplacian_blend(background, foreground, mask, levels=5, width=45, sigma=1.0):
    """Blend foreground over background (N, H, W, C) by mask (N, H, W, 1) in [0, 1]: each band
    of the two Laplacian stacks is mixed by the matching level of the mask's Gaussian stack."""
    blended = 0.0
    for level in range(levels):
        if level < levels - 1:
            taps = _gaussian_taps(width, sigma * 2.0**level)
            low_b, low_f, low_m = (_blur(x, taps) for x in (background, foreground, mask))
            blended = blended + _lerp(background - low_b, foreground - low_f, mask)
            background, foreground, mask = low_b, low_f, low_m
        else:
            blended = blended + _lerp(background, foreground, mask)
    return blended


def load_edit(path: str) -> np.ndarray:
    """(H, W, 4) uint8 RGBA; an image without alpha counts as fully opaque."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def dense_tracking_edit(resolution: int, checks: int = 8) -> np.ndarray:
    """(R, R, 4) uint8 opaque colour pattern over the congealed grid: red grows with x, green
    with y, blue with neither; a faint checkerboard shows the local deformation."""
    ramp = np.linspace(0.0, 1.0, resolution)
    red, green = np.meshgrid(ramp, ramp)
    blue = 1.0 - 0.5 * (red + green)
    cells = (np.arange(resolution) * checks) // resolution
    shade = np.where((cells[None, :] + cells[:, None]) % 2 == 0, 1.0, 0.75)
    rgb = np.stack([red, green, blue], -1) * shade[..., None]
    alpha = np.ones((resolution, resolution, 1))
    return np.round(np.concatenate([rgb, alpha], -1) * 255).astype(np.uint8)


class EditPoints(NamedTuple):
    pixels: np.ndarray  # (P, 2) int32 (x, y) of the edit's pixels with alpha > 0
    colors: np.ndarray  # (P, 3) float32 in [-1, 1]
    alphas: np.ndarray  # (P, 1) float32 in (0, 1]
    resolution: int  # side of the edit: the congealed resolution it lives at


def edit_points(edit_rgba, resolution: int | None = None, stride: int = 1) -> EditPoints:
    """Points of an (R, R, 4) uint8 edit, optionally resized to `resolution` first and thinned
    to every stride-th row and column."""
    edit = np.asarray(edit_rgba)
    if edit.ndim != 3 or edit.shape[2] != 4 or edit.shape[0] != edit.shape[1]:
        raise InputFileError(f"the edit must be a square RGBA image, got shape {edit.shape}")
    if resolution is not None and resolution != edit.shape[0]:
        resized = Image.fromarray(edit, "RGBA").resize((resolution, resolution), Image.BILINEAR)
        edit = np.asarray(resized)
    ys, xs = np.nonzero(edit[..., 3] > 0)
    keep = (xs % stride == 0) & (ys % stride == 0)
    ys, xs = ys[keep], xs[keep]
    if len(xs) == 0:
        raise InputFileError("the edit has no pixel with alpha > 0: nothing to propagate")
    pixels = edit[ys, xs].astype(np.float32) / 255.0
    return EditPoints(
        pixels=np.stack([xs, ys], -1).astype(np.int32),
        colors=pixels[:, :3] * 2.0 - 1.0,
        alphas=pixels[:, 3:],
        resolution=edit.shape[0],
    )


class Propagated(NamedTuple):
    composited: jnp.ndarray  # (N, S, S, 3) uint8 images with the edit blended in
    splatted_rgba: jnp.ndarray  # (N, S, S, 4) uint8 splatted colour and coverage x opacity
    points: jnp.ndarray  # (N, P, 2) float32 (x, y) of the edit pixels in each image
    congealed: jnp.ndarray  # (N, R, R, 3) congealed images in [-1, 1], R = edit resolution


def propagate_batch(
    model: AlignmentModel,
    images,
    edit_arrays,
    *,
    resolution: int,
    sigma: float = 1.3,
    opacity: float = 1.0,
    blend: str = "alpha",
    flips: bool = False,
    cluster: int | None = None,
) -> Propagated:
    """Propagate the edit to uint8 images (N, S, S, 3). edit_arrays: (normalised congealed
    points (P, 2), colours (P, 3), alphas (P, 1)). Jit-compatible."""
    normalized, colors, alphas = edit_arrays
    source = to_signed(images)
    n, size = source.shape[0], source.shape[2]
    chosen = route(model, source, flips=flips, cluster=cluster)  # heads and mirrors
    inputs, flipped = chosen.inputs, chosen.flipped
    stn_images = stn_input(inputs, model.flow_size)
    out = model.congeal(stn_images, inputs, output_resolution=resolution, heads=chosen.heads)
    congealed = jnp.broadcast_to(normalized, (n, *normalized.shape))
    points = point_ops.source_points_from_output(
        out, congealed, size, normalize_input_points=False, unnormalize_output_points=True
    )
    # A mirrored image's points are mirrored back onto the image as given.
    points = points.at[..., 0].set(
        jnp.where(flipped[:, None], size - 1 - points[..., 0], points[..., 0])
    )
    values = jnp.broadcast_to(jnp.concatenate([colors, alphas], -1), (n, *colors.shape[:1], 4))
    splat = splat_points(
        points, values, size, size, sigma, truncate=SPLAT_TRUNCATE, normalize_per_point=False
    )
    color = normalize_splat(splat.accumulated[..., :3], splat.weight)
    coverage = normalize_splat(splat.accumulated[..., 3:], splat.weight, soft=True) * opacity
    if BLENDS[blend] is None:
        composited = coverage * color + (1.0 - coverage) * source
    else:
        composited = laplacian_blend(source, color, coverage, *BLENDS[blend])
    rgba = jnp.concatenate([to_uint8(color), to_uint8(coverage * 2.0 - 1.0)], -1)
    return Propagated(to_uint8(composited), rgba, points, out.image)


def make_propagator(
    model: AlignmentModel,
    edit: EditPoints,
    *,
    sigma: float = 1.3,
    opacity: float = 1.0,
    blend: str = "alpha",
    flips: bool | None = None,
    cluster: int | None = None,
    batch_size: int = 16,
    mesh=None,
) -> BatchRunner:
    """A sharded runner: propagator(images_uint8 of up to batch_size rows) -> Propagated."""
    if blend not in BLENDS:
        raise ConfigError(f"blend must be one of {sorted(BLENDS)}, got {blend!r}")
    flips = bool(model.test_time.get("flips", False)) if flips is None else flips
    normalized = normalize_points(edit.pixels.astype(np.float32), edit.resolution, edit.resolution)
    options = dict(
        resolution=edit.resolution, sigma=float(sigma), opacity=float(opacity), blend=blend,
        flips=flips, cluster=cluster,
    )  # fmt: skip

    def run(constants, images):
        weights, arrays = constants
        return propagate_batch(model.with_weights(weights), images, arrays, **options)

    constants = (model.weights, (np.asarray(normalized), edit.colors, edit.alphas))
    return BatchRunner(run, constants, mesh=mesh, batch_size=batch_size)


class EditPropagation(NamedTuple):
    composited: np.ndarray  # (N, S, S, 3) uint8
    splatted_rgba: np.ndarray  # (N, S, S, 4) uint8


def propagate_edit(
    model: AlignmentModel, images_uint8, edit_rgba, *, sigma: float = 1.3, **options
) -> EditPropagation:
    """Carry an (R, R, 4) edit drawn at the congealed resolution R into uint8 images
    (N, S, S, 3). options: opacity, blend, flips, cluster, batch_size, mesh (make_propagator)."""
    propagator = make_propagator(model, edit_points(edit_rgba), sigma=sigma, **options)
    composited, splatted = [], []
    for start in propagator.starts(len(images_uint8)):
        out = propagator(np.asarray(images_uint8[start : start + propagator.batch_size]))
        composited.append(out.composited)
        splatted.append(out.splatted_rgba)
    return EditPropagation(np.concatenate(composited), np.concatenate(splatted))


class NpyStream:
    """Rows appended to an .npy file whose length is unknown up front; close() writes the final
    shape into the fixed-size header."""

    HEADER_BYTES = 128

    def __init__(self, path, row_shape, dtype=np.float32):
        self.row_shape, self.dtype, self.rows = tuple(row_shape), np.dtype(dtype), 0
        self._file = open(path, "wb")  # noqa: SIM115
        self._file.write(self._header())

    def _header(self) -> bytes:
        meta = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.row_shape),
        }
        text = repr(meta).ljust(self.HEADER_BYTES - 11) + "\n"
        if len(text) != self.HEADER_BYTES - 10:  # the header is rewritten in place on close
            raise ValueError(f"row shape {self.row_shape} does not fit the .npy header")
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")

    def append(self, rows) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(self._header())
        self._file.close()


def source_images(source: sources.Source, size: int, pad: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (size, size, 3) uint8) for every readable image or frame of a data source,
    fitted as prepared data are. Unreadable items are reported on stderr and skipped."""
    for unit in source.units:
        if unit.error:
            print(f"skipped {unit.name}: {unit.error}", file=sys.stderr)
        for item in unit.items:
            try:
                image = item.frame
                if image is None:
                    image = image_io.load_rgb(item.path, apply_exif_orientation=source.read_exif)
            except image_io.ImageReadError as err:
                print(f"skipped {item.name}: {err.reason}", file=sys.stderr)
                continue
            yield item.name, image_io.pad_and_resize(image, size, pad).image


def batched(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def input_batches(data: str, batch: int, *, size=None, pad="center", indices=None, limit=-1):
    """Batches of (names, uint8 images) from a prepared dataset or an image folder."""
    if os.path.isfile(os.path.join(data, "meta.json")):
        dataset = PreparedDataset(data)
        chosen = np.arange(len(dataset)) if indices is None else np.asarray(indices)
        chosen = chosen if limit < 0 else chosen[:limit]
        for chunk in batched(chosen.tolist(), batch):
            yield [f"{i:07d}" for i in chunk], np.asarray(dataset.images[np.asarray(chunk)])
        return
    items = source_images(sources.folder_source(data), size, pad)
    items = (item for index, item in enumerate(items) if limit < 0 or index < limit)
    for chunk in batched(items, batch):
        yield [name for name, _ in chunk], np.stack([image for _, image in chunk])


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="work directory, model bundle or .pt")
    add("--data", required=True, help="prepared dataset or image folder")
    add("--edit", default=None, help="RGBA edit drawn on the congealed average")
    add("--dense_tracking", action="store_true", help="propagate a colour pattern instead")
    add("--out", required=True, help="output directory")
    add("--edit_resolution", type=int, default=None, help="resize the edit (default: its size)")
    add("--stride", type=int, default=1, help="propagate every n-th edit row and column")
    add("--sigma", type=float, default=1.3, help="splat radius (Gaussian std, pixels)")
    add("--opacity", type=float, default=None, help="default 1 (edit), 0.75 (dense tracking)")
    add("--blend", choices=sorted(BLENDS), default="alpha")
    add("--flips", action="store_true", help="congeal x or mirror(x), whichever is smoother")
    add("--iters", type=int, default=None, help="similarity iterations")
    add("--cluster", type=int, default=None, help="head of a clustering model")
    add("--classifier", default=None, help="cluster classifier (default: found with the model)")
    add("--indices", type=int, nargs="+", default=None, help="prepared-dataset items to use")
    add("--n_images", type=int, default=64, help="images to process (-1: all)")
    add("--size", type=int, default=None, help="image folders: side (default: STN supersize)")
    add("--pad", choices=image_io.PAD_MODES, default="center", help="image folders: fitting")
    add("--save_individual", action="store_true", help="also write every image as a PNG")
    add("--save_points", action="store_true", help="write points.npy (N, P, 2)")
    add("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    if (args.edit is None) == (not args.dense_tracking):
        parser.error("pass exactly one of --edit and --dense_tracking")
    model = load_model(args.model, classifier=args.classifier)
    model = with_overrides(model, args.iters, args.flips)
    size = args.size or model.stn.config.supersize
    batches = input_batches(
        args.data, args.batch, size=size, pad=args.pad, indices=args.indices, limit=args.n_images
    )
    names, first = next(batches, (None, None))
    if first is None:
        parser.error(f"{args.data} holds no readable images")
    if args.dense_tracking:
        edit = dense_tracking_edit(args.edit_resolution or first.shape[1])
        opacity = 0.75 if args.opacity is None else args.opacity
    else:
        edit, opacity = load_edit(args.edit), 1.0 if args.opacity is None else args.opacity
    points = edit_points(edit, args.edit_resolution, args.stride)
    propagator = make_propagator(
        model, points, sigma=args.sigma, opacity=opacity, blend=args.blend,
        cluster=args.cluster, batch_size=args.batch,
    )  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    stream = None
    if args.save_points:
        np.save(os.path.join(args.out, "edit_points.npy"), points.pixels)
        stream = NpyStream(os.path.join(args.out, "points.npy"), (len(points.pixels), 2))
    shown, inputs, congealed, all_names = [], [], [], []
    for chunk_names, images in tqdm(itertools.chain([(names, first)], batches), "propagating"):
        for start in range(0, len(images), propagator.batch_size):
            out = propagator(images[start : start + propagator.batch_size])
            if stream is not None:
                stream.append(out.points)
            room = GRID_IMAGES - len(shown)
            shown.extend(out.composited[:room])
            inputs.extend(images[start : start + propagator.batch_size][:room])
            congealed.extend(out.congealed[:room])
            if args.save_individual:
                folder = os.path.join(args.out, "propagated")
                for name, image in zip(chunk_names[start:], out.composited, strict=False):
                    save_png(image, os.path.join(folder, os.path.splitext(name)[0] + ".png"))
        all_names.extend(chunk_names)
    if stream is not None:
        stream.close()
        with open(os.path.join(args.out, "points_names.json"), "w") as f:
            json.dump(all_names, f)
    save_png(
        image_grid(np.stack(shown) / 127.5 - 1.0), os.path.join(args.out, "propagated_grid.png")
    )
    save_png(image_grid(np.stack(inputs) / 127.5 - 1.0), os.path.join(args.out, "input_grid.png"))
    save_png(image_grid(np.stack(congealed)), os.path.join(args.out, "congealed_grid.png"))
    save_png(edit, os.path.join(args.out, "edit.png"))
    print(f"propagated {len(points.pixels)} edit pixels to {len(all_names)} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
