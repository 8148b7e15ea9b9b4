"""Procedural butterflies seen from above, with exact keypoints: the second procedural family.

Unlike the faces (procedural.py) the object is smaller in the frame (its wings span 0.45-0.65 of
the side), thin parts (antennae, body) carry keypoints, and the background is busier: the faces'
background plus a layer of leaves. Placement, bend, keypoint mapping and mirroring are the faces'
(procedural.place_and_draw), so the two families share every convention: canonical frame (x
right, y down, half-width 1), pixel centres at integers, keypoint sides named as seen by the
viewer in the unmirrored image and permuted by FLIP_PERMUTATION when mirrored.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np

from gangealing_jax.data import procedural
from gangealing_jax.data import procedural_drawing as face_drawing
from gangealing_jax.data.procedural import ProceduralConfig, Sample, SampleBatch, sample_rng
from gangealing_jax.data.raster import (
    Canvas,
    box_around,
    capsule_sdf,
    ellipse_sdf,
    points_box,
)

KEYPOINT_NAMES = (
    "head",
    "thorax",
    "abdomen_tip",
    "left_antenna_tip",
    "right_antenna_tip",
    "left_forewing_tip",
    "right_forewing_tip",
    "left_forewing_spot",
    "right_forewing_spot",
    "left_hindwing_tip",
    "right_hindwing_tip",
    "left_hindwing_spot",
    "right_hindwing_spot",
)
FLIP_PERMUTATION = np.array([0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11], dtype=np.int64)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# Pose ranges of the family (ProceduralConfig fields): smaller than the faces (0.75-1.15) and
# turned further (30 degrees against 25); the wings span 0.45-0.65 of the side. A first
# version at scale 0.5-0.8, shifts of 0.18, a 0.03 outline and 6-12 leaves was beyond the 32 px
# generator of configs/gan/procedural.py: it drew blobs without an axis (README, "Collapse
# monitor").
CONFIG_DEFAULTS = dict(
    max_rotation_deg=30.0, scale_range=(0.7, 1.0), max_translation=0.12, deform_amplitude=0.03
)

RED = (255.0, 0.0, 0.0)
GREEN = (0.0, 255.0, 0.0)
BLUE = (0.0, 0.0, 255.0)

_WING = np.array(
    [(232, 130, 40), (240, 200, 60), (70, 120, 210), (225, 225, 215), (180, 60, 50),
     (110, 170, 90), (150, 90, 170), (60, 55, 60)],
    np.float32,
)  # fmt: skip
_LEAF = np.array([(70, 110, 50), (105, 140, 60), (130, 110, 60), (60, 90, 70)], np.float32)
_OFFSET_Y = 0.1  # shifts the body down so that the bbox of the mean butterfly is centred

_SHAPE_RANGES = {
    "fore_rx": (0.3, 0.38),  # half-length of a forewing (an ellipse from the wing root)
    "fore_ry": (0.16, 0.22),
    "fore_tilt": (0.3, 0.6),  # radians above the horizontal
    "hind_rx": (0.2, 0.27),
    "hind_ry": (0.13, 0.18),
    "hind_tilt": (0.5, 0.9),  # radians below the horizontal
    "spot_along": (0.15, 0.45),  # forewing spot: fraction of rx from the centre towards the tip
    "spot_radius": (0.045, 0.065),
    "antenna_dx": (0.14, 0.26),
    "antenna_y": (-0.66, -0.56),
    "abdomen_y": (0.3, 0.42),
    "head_radius": (0.055, 0.07),
}


class Butterfly(NamedTuple):
    """Shape (canonical units, body on x = 0) and look of one butterfly."""

    fore_rx: float
    fore_ry: float
    fore_tilt: float
    hind_rx: float
    hind_ry: float
    hind_tilt: float
    spot_along: float
    spot_radius: float
    antenna_dx: float
    antenna_y: float
    abdomen_y: float
    head_radius: float
    wing: np.ndarray  # (3,) colours, RGB float32
    band: np.ndarray  # inner band of each wing
    spot: np.ndarray
    outline: np.ndarray
    body: np.ndarray
    margin_dots: bool  # a row of light dots along the forewing margins
    solid: bool  # forewing spots RED, hindwing spots BLUE, head GREEN, nothing drawn over them


class Scene(NamedTuple):
    """Everything that determines one sample (the faces' Scene with a butterfly)."""

    butterfly: Butterfly
    pose: procedural.Pose
    deformation: procedural.Deformation
    background_seed: int


def _jitter(rng, palette, amount=16.0):
    base = palette[rng.integers(len(palette))]
    return np.clip(base + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def sample_butterfly(rng: np.random.Generator, solid: bool = False) -> Butterfly:
    lo, hi = np.array(list(_SHAPE_RANGES.values())).T
    shape = dict(zip(_SHAPE_RANGES, (lo + (hi - lo) * rng.random(len(lo))).tolist(), strict=True))
    wing = _jitter(rng, _WING)
    band = _jitter(rng, _WING)
    # A band too close to the wing colour would not show; push it to the other side of grey.
    if np.abs(band - wing).mean() < 40:
        band = np.clip(255 - wing, 0, 255).astype(np.float32)
    return Butterfly(
        **shape,
        wing=wing,
        band=band,
        spot=_jitter(rng, np.array([(20, 20, 25), (245, 245, 240), (40, 60, 160)], np.float32)),
        outline=(wing * 0.3).astype(np.float32),
        body=_jitter(rng, np.array([(50, 40, 35), (90, 70, 50)], np.float32)),
        margin_dots=bool(rng.random() < 0.5),
        solid=solid,
    )


def mean_butterfly() -> Butterfly:
    """The butterfly at the middle of every shape range (used for canonical keypoints)."""
    shape = {name: 0.5 * (lo + hi) for name, (lo, hi) in _SHAPE_RANGES.items()}
    grey = np.full(3, 128, np.float32)
    colours = dict.fromkeys(("wing", "band", "spot", "outline", "body"), grey)
    return Butterfly(**shape, **colours, margin_dots=False, solid=False)


def _wings(b: Butterfly):
    """Per side (left, right), per wing (fore, hind): (centre (2,), rx, ry, angle, unit dir (2,))."""
    wings = []
    for side in (-1.0, 1.0):
        for root_y, rx, ry, tilt in (
            (-0.12, b.fore_rx, b.fore_ry, -b.fore_tilt),
            (0.02, b.hind_rx, b.hind_ry, b.hind_tilt),
        ):
            direction = np.array([side * np.cos(tilt), np.sin(tilt)])
            root = np.array([side * 0.03, root_y + _OFFSET_Y])
            centre = root + 0.95 * rx * direction
            wings.append((centre, rx, ry, float(np.arctan2(direction[1], direction[0])), direction))
    return wings  # left fore, left hind, right fore, right hind


def _head(b: Butterfly):
    return np.array([0.0, -0.24 + _OFFSET_Y])


def butterfly_keypoints(b: Butterfly) -> np.ndarray:
    """(P, 2) canonical keypoints in the order of KEYPOINT_NAMES."""
    (lf, lh, rf, rh) = _wings(b)
    head = _head(b)

    def tip(wing):
        centre, rx, _, _, direction = wing
        return centre + rx * direction

    def fore_spot(wing):
        centre, rx, _, _, direction = wing
        return centre + b.spot_along * rx * direction

    return np.array(
        [
            head,
            (0.0, -0.08 + _OFFSET_Y),
            (0.0, b.abdomen_y + _OFFSET_Y),
            head + (-b.antenna_dx, b.antenna_y + 0.24),
            head + (b.antenna_dx, b.antenna_y + 0.24),
            tip(lf),
            tip(rf),
            fore_spot(lf),
            fore_spot(rf),
            tip(lh),
            tip(rh),
            lh[0],
            rh[0],
        ],
        np.float64,
    )


def butterfly_outline(b: Butterfly) -> np.ndarray:
    """(K, 2) canonical points on the silhouette (wings, antenna tips, abdomen), for bboxes."""
    t = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    points = [butterfly_keypoints(b)[[2, 3, 4]]]
    for centre, rx, ry, angle, _ in _wings(b):
        ex, ey = rx * np.cos(t), ry * np.sin(t)
        c, s = np.cos(angle), np.sin(angle)
        points.append(np.stack([centre[0] + c * ex - s * ey, centre[1] + s * ex + c * ey], -1))
    return np.concatenate(points)


OUTLINE_WIDTH = 0.05  # outline rim, outside each wing, in canonical units


def draw_butterfly(canvas: Canvas, b: Butterfly) -> None:
    """Paint the butterfly into a canvas whose coordinates are canonical."""
    wings = _wings(b)
    for index in (1, 3, 0, 2):  # hindwings under forewings
        centre, rx, ry, angle, direction = wings[index]
        box = box_around(centre[0], centre[1], rx, rx)
        wing = partial(ellipse_sdf, cx=centre[0], cy=centre[1], rx=rx, ry=ry, angle=angle)
        canvas.draw(box, wing, b.wing, outline=b.outline, width=OUTLINE_WIDTH)
        band_centre = centre - 0.25 * rx * direction
        band = partial(
            ellipse_sdf, cx=band_centre[0], cy=band_centre[1], rx=0.5 * rx, ry=0.6 * ry, angle=angle
        )
        canvas.draw(box, band, b.band, clip_fn=wing, alpha=0.85)
        fore = index in (0, 2)
        spot_at = centre + b.spot_along * rx * direction if fore else centre
        radius = b.spot_radius if fore else 0.8 * b.spot_radius
        colour = (RED if fore else BLUE) if b.solid else b.spot
        spot = partial(ellipse_sdf, cx=spot_at[0], cy=spot_at[1], rx=radius, ry=radius)
        canvas.draw(box_around(*spot_at, radius, radius), spot, colour)
        if fore and b.margin_dots and not b.solid:
            normal = np.array([-direction[1], direction[0]]) * np.sign(-direction[1] or 1.0)
            for along in (-0.5, 0.0, 0.5):
                dot = centre + along * rx * direction + 0.7 * ry * normal
                canvas.draw(
                    box_around(*dot, 0.03, 0.03),
                    partial(ellipse_sdf, cx=dot[0], cy=dot[1], rx=0.025, ry=0.025),
                    (240, 240, 230),
                    clip_fn=wing,
                )
    head = _head(b)
    body_top, body_bottom = (0.0, -0.2 + _OFFSET_Y), (0.0, b.abdomen_y + _OFFSET_Y - 0.035)
    body = partial(capsule_sdf, a=body_top, b=body_bottom, radius=0.035)
    canvas.draw(points_box([body_top, body_bottom], 0.06), body, b.body)
    thorax = partial(ellipse_sdf, cx=0.0, cy=-0.08 + _OFFSET_Y, rx=0.055, ry=0.1)
    canvas.draw(box_around(0.0, -0.08 + _OFFSET_Y, 0.1, 0.1), thorax, b.body)
    for side in (-1.0, 1.0):
        tip = head + (side * b.antenna_dx, b.antenna_y + 0.24)
        antenna = partial(capsule_sdf, a=tuple(head), b=tuple(tip), radius=0.012)
        canvas.draw(points_box([head, tip], 0.03), antenna, b.body)
        knob = partial(ellipse_sdf, cx=tip[0], cy=tip[1], rx=0.028, ry=0.028)
        canvas.draw(box_around(*tip, 0.03, 0.03), knob, b.body)
    r = b.head_radius
    canvas.draw(
        box_around(*head, r, r),
        partial(ellipse_sdf, cx=head[0], cy=head[1], rx=r, ry=r),
        GREEN if b.solid else b.body,
    )


def background(rng: np.random.Generator, resolution: int, clutter_range) -> np.ndarray:
    """(3, H, W) float32: the faces' background under 3-7 leaves, drawn in the image frame."""
    image = face_drawing.background(rng, resolution, clutter_range)
    centres = (np.arange(resolution, dtype=np.float32) * 2 + 1) / resolution - 1
    x, y = np.meshgrid(centres, centres)
    half = resolution / 2.0
    canvas = Canvas(image, x, y, 2.0 / resolution, [(half, 0, half - 0.5), (0, half, half - 0.5)])
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(-1.1, 1.1, 2)
        rx = rng.uniform(0.12, 0.3)
        ry = rx * rng.uniform(0.25, 0.45)
        leaf = partial(ellipse_sdf, cx=cx, cy=cy, rx=rx, ry=ry, angle=rng.uniform(0, np.pi))
        canvas.draw(box_around(cx, cy, rx, rx), leaf, _jitter(rng, _LEAF, 25.0), alpha=0.9)
    return image


def sample_scene(rng: np.random.Generator, config: ProceduralConfig) -> Scene:
    butterfly = sample_butterfly(rng, config.solid_feature_colors)
    pose, deformation = procedural.sample_placement(rng, config)
    return Scene(butterfly, pose, deformation, int(rng.integers(0, 2**62)))


def render_scene(scene: Scene, config: ProceduralConfig) -> Sample:
    """Draw a scene at config.resolution (config's ranges are not consulted: the scene is fixed)."""
    image = background(
        np.random.default_rng(scene.background_seed), config.resolution, config.clutter_range
    )
    return procedural.place_and_draw(
        image,
        scene.pose,
        scene.deformation,
        lambda canvas: draw_butterfly(canvas, scene.butterfly),
        butterfly_keypoints(scene.butterfly),
        butterfly_outline(scene.butterfly),
        FLIP_PERMUTATION,
    )


def scene_keypoints(scene: Scene) -> np.ndarray:
    """(P, 2) canonical keypoints of the scene's butterfly: its pose undone, its bend kept."""
    return butterfly_keypoints(scene.butterfly)


def render(seed_or_rng, index: int, config: ProceduralConfig) -> Sample:
    """Sample `index` of the family `seed` (an int), or the next draw from a numpy Generator."""
    if isinstance(seed_or_rng, np.random.Generator):
        rng = seed_or_rng
    else:
        rng = sample_rng(int(seed_or_rng), index)
    return render_scene(sample_scene(rng, config), config)


def generate(n: int, seed: int, config: ProceduralConfig, start: int = 0) -> SampleBatch:
    """Samples start .. start + n - 1 of the family `seed`, stacked."""
    return procedural.stack_samples(render, NUM_KEYPOINTS, n, seed, config, start)


def canonical_keypoints(config: ProceduralConfig) -> np.ndarray:
    """(P, 3) keypoints of the mean butterfly at the identity pose, in pixels, all visible."""
    identity = procedural.Pose(0.0, 1.0, 0.0, 0.0, False)
    still = procedural.Deformation(0.0, np.zeros((2, 2, 2)), np.zeros((2, 2)))
    points = butterfly_keypoints(mean_butterfly())
    xy = procedural.canonical_to_pixel(identity, still, config.resolution, points)
    return np.concatenate([xy, np.ones((NUM_KEYPOINTS, 1))], axis=-1).astype(np.float32)
