"""Edit propagation to every frame of a video (or a folder of frames), frame by frame.

    python -m gangealing_jax.apps.video --model runs/cat --input clip.mp4|frame_folder
        --edit edit.png|--dense_tracking --out out.mp4|out.gif|frames_dir
        [--size 256] [--pad center] [--fps 30] [--side_by_side] [--save_points points.npy]

Frames are fitted into squares as prepared data are (--size, --pad), congealed in batches
sharded over every device, and the edit is splatted into each (see apps.propagate); no temporal
information is used, as in the reference. Output: a video file (needs imageio-ffmpeg or PyAV:
`pip install imageio[ffmpeg]`), an animated GIF (Pillow; frames are held until the end and
quantised to 256 colours), or a folder of PNG frames (a path without a suffix, or an existing
folder). --side_by_side puts the congealed frame next to the propagated one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from gangealing_jax.apps.congeal import with_overrides
from gangealing_jax.apps.model import AlignmentModel, load_model
from gangealing_jax.apps.propagate import (
    BLENDS,
    EditPoints,
    NpyStream,
    batched,
    dense_tracking_edit,
    edit_points,
    load_edit,
    make_propagator,
    source_images,
)
from gangealing_jax.data import image_io, sources
from gangealing_jax.errors import ConfigError, entry_point
from gangealing_jax.training.metrics_log import save_png

VIDEO_BACKENDS = ("imageio_ffmpeg", "av")


class FrameWriter:
    """Writes (H, W, 3) uint8 frames to a GIF, a folder of PNGs or a video file; a context
    manager. Video files need imageio-ffmpeg or PyAV, checked before anything is written."""

    def __init__(self, path: str, fps: float = 30.0):
        self.path, self.fps, self.count = str(path), float(fps), 0
        extension = os.path.splitext(self.path)[1].lower()
        self._frames, self._video = [], None
        if os.path.isdir(self.path) or not extension:
            self.kind = "folder"
            os.makedirs(self.path, exist_ok=True)
        elif extension == ".gif":
            self.kind = "gif"
        else:
            self.kind = "video"
            backends = [m for m in VIDEO_BACKENDS if importlib.util.find_spec(m)]
            if not backends:
                raise sources.MissingVideoBackendError(
                    f"writing {self.path} needs a video backend for imageio: "
                    "`pip install imageio[ffmpeg]` (or `pip install av`); or pass an --out "
                    "ending in .gif, or a folder for PNG frames"
                )
            self._open_video(backends[0])

    def _open_video(self, backend: str) -> None:
        if backend == "imageio_ffmpeg":
            import imageio.v2 as imageio

            # macro_block_size 1: keep odd sizes as they are rather than resizing them.
            self._video = imageio.get_writer(self.path, fps=self.fps, macro_block_size=1)
            self._append = self._video.append_data
        else:
            import imageio.v3 as iio

            self._video = iio.imopen(self.path, "w", plugin="pyav")
            self._video.init_video_stream("libx264", fps=self.fps)
            self._append = self._video.write_frame

    def append(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, np.uint8)
        if self.kind == "folder":
            save_png(frame, os.path.join(self.path, f"{self.count:06d}.png"))
        elif self.kind == "gif":
            self._frames.append(frame)
        else:
            self._append(frame)
        self.count += 1

    def close(self) -> None:
        if self.kind == "gif" and self._frames:
            import imageio.v3 as iio

            iio.imwrite(self.path, np.stack(self._frames), duration=1000.0 / self.fps, loop=0)
            self._frames = []
        elif self._video is not None:
            self._video.close()
            self._video = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size:
        return images
    return np.stack(
        [np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in images]
    )


def propagate_video(
    model: AlignmentModel,
    frames: Iterable[np.ndarray],
    edit: EditPoints,
    writer: FrameWriter,
    *,
    side_by_side: bool = False,
    points_path: str | None = None,
    batch_size: int = 16,
    mesh=None,
    progress: bool = False,
    **options,
) -> int:
    """Propagate `edit` into (S, S, 3) uint8 frames and write them; returns the frame count.
    options: sigma, opacity, blend, flips, cluster (apps.propagate.make_propagator)."""
    propagator = make_propagator(model, edit, batch_size=batch_size, mesh=mesh, **options)
    stream = None if points_path is None else NpyStream(points_path, (len(edit.pixels), 2))
    try:
        for chunk in tqdm(batched(frames, propagator.batch_size), disable=not progress):
            out = propagator(np.stack(chunk))
            shown = out.composited
            if side_by_side:
                congealed = np.clip((out.congealed + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
                shown = np.concatenate([shown, _resize(congealed, shown.shape[1])], axis=2)
            for frame in shown:
                writer.append(frame)
            if stream is not None:
                stream.append(out.points)
    finally:
        if stream is not None:
            stream.close()
    return writer.count


def frame_source(path: str, frame_step: int = 1, max_frames: int | None = None):
    """A video file's frames or a folder's images (sorted by name)."""
    if os.path.isdir(path):
        if frame_step != 1:
            raise ConfigError("--frame_step applies to video files; thin a frame folder yourself")
        return sources.folder_source(path, max_items=max_frames)
    return sources.video_source(path, frame_step, max_frames)


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="work directory, model bundle or .pt")
    add("--input", required=True, help="video file or folder of frames")
    add("--edit", default=None, help="RGBA edit drawn on the congealed average")
    add("--dense_tracking", action="store_true", help="propagate a colour pattern instead")
    add("--out", required=True, help="output .mp4 (or other video), .gif, or frame folder")
    add("--size", type=int, default=None, help="frame side (default: STN supersize)")
    add("--pad", choices=image_io.PAD_MODES, default="center", help="how frames become square")
    add("--fps", type=float, default=30.0)
    add("--frame_step", type=int, default=1, help="keep every n-th video frame")
    add("--max_frames", type=int, default=None)
    add("--edit_resolution", type=int, default=None, help="resize the edit (default: its size)")
    add("--stride", type=int, default=1, help="propagate every n-th edit row and column")
    add("--sigma", type=float, default=1.2, help="splat radius (Gaussian std, pixels)")
    add("--opacity", type=float, default=None, help="default 1 (edit), 0.7 (dense tracking)")
    add("--blend", choices=sorted(BLENDS), default="alpha")
    add("--flips", action="store_true", help="congeal x or mirror(x), whichever is smoother")
    add("--iters", type=int, default=None, help="similarity iterations")
    add("--cluster", type=int, default=None, help="head of a clustering model")
    add("--classifier", default=None, help="cluster classifier (default: found with the model)")
    add("--side_by_side", action="store_true", help="show the congealed frame alongside")
    add("--save_points", default=None, help="write the (T, P, 2) correspondences here (.npy)")
    add("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    if (args.edit is None) == (not args.dense_tracking):
        parser.error("pass exactly one of --edit and --dense_tracking")
    model = load_model(args.model, classifier=args.classifier)
    model = with_overrides(model, args.iters, args.flips)
    size = args.size or model.stn.config.supersize
    if args.dense_tracking:
        edit = dense_tracking_edit(args.edit_resolution or size)
        opacity = 0.7 if args.opacity is None else args.opacity
    else:
        edit, opacity = load_edit(args.edit), 1.0 if args.opacity is None else args.opacity
    points = edit_points(edit, args.edit_resolution, args.stride)
    source = frame_source(args.input, args.frame_step, args.max_frames)
    frames = (image for _, image in source_images(source, size, args.pad))
    with FrameWriter(args.out, args.fps) as writer:
        count = propagate_video(
            model, frames, points, writer, side_by_side=args.side_by_side,
            points_path=args.save_points, batch_size=args.batch, progress=True,
            sigma=args.sigma, opacity=opacity, blend=args.blend, cluster=args.cluster,
        )  # fmt: skip
    if count == 0:
        raise SystemExit(f"{args.input} gave no readable frames")
    print(f"wrote {count} frames to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
