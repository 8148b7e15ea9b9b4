"""Procedural cartoon animal faces with exact ground-truth keypoints (numpy only).

Each sample is a face drawn in a canonical frame (x right, y down, the frame's half-width is 1),
bent by a mild smooth deformation, placed by a similarity pose, composited over a cluttered
background and optionally mirrored. Every output pixel is coloured by evaluating the canonical
face at the pixel's canonical coordinate, and each keypoint is pushed through the inverse of that
same map, so keypoints follow the image exactly and the face is never resampled.

Keypoint sides are named as seen by the viewer in the unmirrored face ("left_eye" has the smaller
x). A mirrored sample keeps that convention: its keypoints are the mirrored ones permuted by
FLIP_PERMUTATION. Coordinates are pixel centres: pixel column i is at x = i, so mirroring maps
x -> W - 1 - x. Points outside the frame keep their coordinates and get visibility 0.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from gangealing_jax.data import procedural_drawing as drawing
from gangealing_jax.data import raster

KEYPOINT_NAMES = (
    "left_ear_tip",
    "right_ear_tip",
    "left_eye",
    "right_eye",
    "nose",
    "mouth_left",
    "mouth_right",
    "mouth_center",
    "chin",
    "left_cheek",
    "right_cheek",
    "forehead",
)
FLIP_PERMUTATION = np.array([1, 0, 3, 2, 4, 6, 5, 7, 8, 10, 9, 11], dtype=np.int64)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
CONFIG_DEFAULTS = {}  # the family's pose ranges are ProceduralConfig's defaults
_MAX_FIXED_POINT_ITERS = 40  # the bend is a contraction (Lipschitz < 0.3); ~10 steps suffice


@dataclasses.dataclass(frozen=True)
class ProceduralConfig:
    """Ranges of the procedural family. Translation is a fraction of the frame side."""

    resolution: int = 64
    max_rotation_deg: float = 25.0
    scale_range: tuple[float, float] = (0.75, 1.15)
    max_translation: float = 0.12
    flip_probability: float = 0.5
    deform_amplitude: float = 0.035  # canonical units; 0 disables the non-rigid bend
    clutter_range: tuple[int, int] = (3, 8)  # number of background shapes, inclusive
    solid_feature_colors: bool = False  # eyes pure red, nose pure green (for checking keypoints)

    def __post_init__(self):
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {self.resolution}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if not 0 <= self.max_rotation_deg <= 90:
            raise ValueError(f"max_rotation_deg must be in [0, 90], got {self.max_rotation_deg}")
        if not 0 <= self.max_translation <= 0.5:
            raise ValueError(f"max_translation must be in [0, 0.5], got {self.max_translation}")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if not 0 <= self.deform_amplitude <= 0.05:
            # Larger bends stop being a contraction and the keypoint inversion could fail.
            raise ValueError(f"deform_amplitude must be in [0, 0.05], got {self.deform_amplitude}")
        if not 0 <= self.clutter_range[0] <= self.clutter_range[1]:
            raise ValueError(f"clutter_range must satisfy 0 <= lo <= hi, got {self.clutter_range}")


class Pose(NamedTuple):
    """Similarity placement: canonical v -> normalized frame scale * R(angle) v + (tx, ty)."""

    angle: float  # radians
    scale: float
    tx: float  # normalized frame units (the frame spans [-1, 1])
    ty: float
    flip: bool


class Deformation(NamedTuple):
    """Smooth bend u = v + d(v), d_c(v) = amplitude/2 * sum_k sin(freqs[c, k] . v + phases[c, k])."""

    amplitude: float
    freqs: np.ndarray  # (2, 2, 2)
    phases: np.ndarray  # (2, 2)


class Scene(NamedTuple):
    """Everything that determines one sample."""

    face: drawing.Face
    pose: Pose
    deformation: Deformation
    background_seed: int


class Sample(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    keypoints: np.ndarray  # (P, 3) float32: pixel x, pixel y, visible
    bbox: np.ndarray  # (4,) float32: x0, y0, x1, y1 of the face in pixels, clipped to the frame


class SampleBatch(NamedTuple):
    images: np.ndarray  # (N, H, W, 3) uint8
    keypoints: np.ndarray  # (N, P, 3) float32
    bboxes: np.ndarray  # (N, 4) float32


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Independent stream for sample `index` of the family seeded by `seed`."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0, int(index))))


def sample_scene(rng: np.random.Generator, config: ProceduralConfig) -> Scene:
    face = drawing.sample_face(rng, config.solid_feature_colors)
    pose, deformation = sample_placement(rng, config)
    return Scene(face, pose, deformation, int(rng.integers(0, 2**62)))


def sample_placement(rng: np.random.Generator, config) -> tuple[Pose, Deformation]:
    """A random similarity pose and bend within config's ranges (shared by every family)."""
    max_t = 2.0 * config.max_translation  # the frame spans 2 normalized units
    pose = Pose(
        angle=float(np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))),
        scale=float(rng.uniform(*config.scale_range)),
        tx=float(rng.uniform(-max_t, max_t)),
        ty=float(rng.uniform(-max_t, max_t)),
        flip=bool(rng.random() < config.flip_probability),
    )
    # |freq| <= 4 bounds each component's gradient by 4 * amplitude, so the Jacobian of d has
    # norm below 4 * sqrt(2) * 0.05 < 0.3: inverting the bend by fixed-point iteration converges.
    direction = rng.uniform(0.0, 2.0 * np.pi, size=(2, 2))
    magnitude = rng.uniform(1.5, 4.0, size=(2, 2))
    freqs = np.stack([np.cos(direction), np.sin(direction)], axis=-1) * magnitude[..., None]
    deformation = Deformation(
        amplitude=float(config.deform_amplitude),
        freqs=freqs,
        phases=rng.uniform(0.0, 2.0 * np.pi, size=(2, 2)),
    )
    return pose, deformation


def _bend(deformation: Deformation, vx, vy):
    """d(v) for arrays vx, vy of any (equal) shape."""
    half = np.float32(0.5 * deformation.amplitude)
    f = deformation.freqs.astype(np.float32)
    p = deformation.phases.astype(np.float32)
    out = []
    for c in range(2):
        wave = np.sin(f[c, 0, 0] * vx + f[c, 0, 1] * vy + p[c, 0])
        wave += np.sin(f[c, 1, 0] * vx + f[c, 1, 1] * vy + p[c, 1])
        out.append(half * wave)
    return out[0], out[1]


def _bend_points(deformation: Deformation, v: np.ndarray) -> np.ndarray:
    """d(v) for points (K, 2), in float64."""
    waves = np.sin(v @ deformation.freqs.reshape(4, 2).T + deformation.phases.reshape(4))  # (K, 4)
    return 0.5 * deformation.amplitude * waves.reshape(-1, 2, 2).sum(axis=-1)


def pixel_to_canonical(pose: Pose, deformation: Deformation, resolution: int, px, py):
    """Canonical coordinates (ux, uy), float32, of pixel positions px, py of the unmirrored image
    (broadcastable arrays, pixel centres at integers)."""
    to_normalized = np.float32(2.0 / resolution)
    dx = (np.asarray(px, np.float32) + np.float32(0.5)) * to_normalized - np.float32(1 + pose.tx)
    dy = (np.asarray(py, np.float32) + np.float32(0.5)) * to_normalized - np.float32(1 + pose.ty)
    c, s = np.float32(np.cos(pose.angle) / pose.scale), np.float32(np.sin(pose.angle) / pose.scale)
    vx = c * dx + s * dy  # R^T (n - t) / scale
    vy = c * dy - s * dx
    bx, by = _bend(deformation, vx, vy)
    return vx + bx, vy + by


def _pixel_grid(resolution: int):
    centres = np.arange(resolution, dtype=np.float32)
    return centres[None, :], centres[:, None]


def canonical_to_pixel(pose: Pose, deformation: Deformation, resolution: int, points):
    """Inverse of pixel_to_canonical for points (K, 2) in canonical units -> (K, 2) pixels.

    Solves v + d(v) = u by fixed-point iteration (d is a contraction), then applies the pose.
    Does not mirror: mirroring is applied to whole samples.
    """
    points = np.asarray(points, np.float64)
    v = points
    for _ in range(_MAX_FIXED_POINT_ITERS):
        v, previous = points - _bend_points(deformation, v), v
        if np.max(np.abs(v - previous)) < 1e-10:
            break
    vx, vy = v[:, 0], v[:, 1]
    c, s = np.cos(pose.angle) * pose.scale, np.sin(pose.angle) * pose.scale
    nx = c * vx - s * vy + pose.tx
    ny = s * vx + c * vy + pose.ty
    return np.stack([((nx + 1) * resolution - 1) / 2, ((ny + 1) * resolution - 1) / 2], axis=-1)


def _canonical_to_pixel_affine(pose: Pose, resolution: int) -> np.ndarray:
    """(2, 3) pixel = A @ (v, 1) for the pose alone (no bend)."""
    half = resolution / 2.0
    c, s = np.cos(pose.angle) * pose.scale * half, np.sin(pose.angle) * pose.scale * half
    return np.array([(c, -s, (pose.tx + 1) * half - 0.5), (s, c, (pose.ty + 1) * half - 0.5)])


def render_scene(scene: Scene, config: ProceduralConfig) -> Sample:
    """Draw a scene at config.resolution (config's ranges are not consulted: the scene is fixed)."""
    res = config.resolution
    image = drawing.background(
        np.random.default_rng(scene.background_seed), res, config.clutter_range
    )
    return place_and_draw(
        image,
        scene.pose,
        scene.deformation,
        lambda canvas: drawing.draw_face(canvas, scene.face),
        drawing.face_keypoints(scene.face),
        drawing.face_outline(scene.face),
        FLIP_PERMUTATION,
    )


def place_and_draw(
    image, pose: Pose, deformation: Deformation, draw, keypoints, outline, flip_permutation
) -> Sample:
    """Paint an object over `image` (3, H, W) float32 through pose and bend; any family's renderer.

    draw(canvas) paints in canonical coordinates; keypoints (P, 2) and outline (K, 2) are
    canonical points, the outline's image giving the bbox. Mirrors the result when pose.flip.
    """
    res = image.shape[-1]
    ux, uy = pixel_to_canonical(pose, deformation, res, *_pixel_grid(res))
    canvas = raster.Canvas(
        image,
        ux,
        uy,
        pixel_size=2.0 / (res * pose.scale),  # one pixel in canonical units
        affine=_canonical_to_pixel_affine(pose, res),
        slack=deformation.amplitude,  # |d(v)| <= amplitude
    )
    draw(canvas)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    count = len(keypoints)
    xy_all = canonical_to_pixel(pose, deformation, res, np.concatenate([keypoints, outline]))
    xy, outline = xy_all[:count], xy_all[count:]
    inside = np.all((xy >= -0.5) & (xy <= res - 0.5), axis=-1)
    keypoints = np.concatenate([xy, inside[:, None]], axis=-1).astype(np.float32)
    outline = np.clip(outline, 0, res - 1)
    bbox = np.concatenate([outline.min(axis=0), outline.max(axis=0)]).astype(np.float32)
    if pose.flip:
        image = image[:, ::-1]
        keypoints = keypoints.copy()
        keypoints[:, 0] = res - 1 - keypoints[:, 0]
        keypoints = keypoints[flip_permutation]
        bbox = np.array([res - 1 - bbox[2], bbox[1], res - 1 - bbox[0], bbox[3]], np.float32)
    return Sample(np.ascontiguousarray(image), keypoints, bbox)


def scene_keypoints(scene: Scene) -> np.ndarray:
    """(P, 2) canonical keypoints of the scene's face: its pose undone, its bend kept."""
    return drawing.face_keypoints(scene.face)


def render(seed_or_rng, index: int, config: ProceduralConfig = ProceduralConfig()) -> Sample:
    """Sample `index` of the family `seed` (an int), or the next draw from a numpy Generator.

    With an int seed the result depends only on (seed, index, config); with a Generator the
    scene is drawn from its current state and `index` is not used.
    """
    if isinstance(seed_or_rng, np.random.Generator):
        rng = seed_or_rng
    else:
        rng = sample_rng(int(seed_or_rng), index)
    return render_scene(sample_scene(rng, config), config)


def generate(
    n: int, seed: int, config: ProceduralConfig = ProceduralConfig(), start: int = 0
) -> SampleBatch:
    """Samples start .. start + n - 1 of the family `seed`, stacked."""
    return stack_samples(render, NUM_KEYPOINTS, n, seed, config, start)


def stack_samples(render_fn, num_keypoints: int, n: int, seed: int, config, start: int = 0):
    """Samples start .. start + n - 1 of a procedural family's `render_fn`, as one SampleBatch."""
    res = config.resolution
    images = np.empty((n, res, res, 3), np.uint8)
    keypoints = np.empty((n, num_keypoints, 3), np.float32)
    bboxes = np.empty((n, 4), np.float32)
    for i in range(n):
        images[i], keypoints[i], bboxes[i] = render_fn(seed, start + i, config)
    return SampleBatch(images, keypoints, bboxes)


def canonical_keypoints(config: ProceduralConfig = ProceduralConfig()) -> np.ndarray:
    """(P, 3) keypoints of the average face at the identity pose, in pixels, all visible."""
    identity = Pose(0.0, 1.0, 0.0, 0.0, False)
    still = Deformation(0.0, np.zeros((2, 2, 2)), np.zeros((2, 2)))
    xy = canonical_to_pixel(
        identity, still, config.resolution, drawing.face_keypoints(drawing.mean_face())
    )
    return np.concatenate([xy, np.ones((NUM_KEYPOINTS, 1))], axis=-1).astype(np.float32)
