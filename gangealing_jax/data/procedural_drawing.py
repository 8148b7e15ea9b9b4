"""The faces and backgrounds of the procedural family: random looks, geometry, keypoints, drawing.

Faces live in the canonical frame (x right, y down, the frame's half-width is 1, head centred at
x = 0) and are drawn on a Canvas whose pixels carry canonical coordinates; backgrounds are
drawn in the image frame. Colours are float32 RGB in [0, 255], images (3, H, W) while drawing.
"""

from __future__ import annotations

import functools
from functools import partial
from typing import NamedTuple

import numpy as np

from gangealing_jax.data.raster import (
    Canvas,
    box_around,
    capsule_sdf,
    ellipse_sdf,
    points_box,
    polygon_sdf,
)

RED = (255.0, 0.0, 0.0)
GREEN = (0.0, 255.0, 0.0)

_FUR = np.array(
    [
        (222, 140, 62),  # ginger
        (150, 150, 158),  # grey
        (128, 88, 58),  # brown
        (236, 214, 168),  # cream
        (70, 64, 64),  # near black
        (236, 234, 228),  # white
        (208, 168, 88),  # golden
        (180, 84, 52),  # fox red
        (112, 126, 152),  # blue grey
    ],
    np.float32,
)
_IRIS = np.array(
    [(120, 190, 70), (228, 190, 50), (80, 150, 225), (150, 98, 48), (235, 140, 40)], np.float32
)
_NOSE = np.array([(226, 122, 136), (52, 40, 42), (120, 72, 60)], np.float32)
_INNER_EAR = np.array([(232, 160, 172), (214, 130, 140)], np.float32)


class Face(NamedTuple):
    """Shape (canonical units, head centred at x = 0) and look of one face."""

    head_cy: float
    head_rx: float
    head_ry: float
    round_ears: bool
    ear_angle: float  # radians from the upward vertical
    ear_half_width: float  # radians of head boundary covered by half an ear base
    ear_length: float
    eye_dx: float
    eye_dy: float  # relative to head_cy
    eye_radius: float
    eye_style: int  # 0 slit pupil, 1 round pupil, 2 dark eye with a highlight
    nose_dy: float
    nose_size: float
    triangle_nose: bool
    mouth_dy: float
    mouth_half_width: float
    mouth_curve: float  # how much higher the corners sit than the centre
    fur: np.ndarray  # (3,) colours below, RGB float32
    outline: np.ndarray
    inner_ear: np.ndarray
    iris: np.ndarray
    nose: np.ndarray
    muzzle: np.ndarray | None
    pattern: int  # 0 none, 1 forehead stripes, 2 spots
    pattern_color: np.ndarray
    stripes: np.ndarray  # (3,): frequency, angle, phase
    spots: np.ndarray  # (K, 3): x, y, radius
    eye_patch: np.ndarray | None  # colour of a patch around the left eye, or None
    solid: bool  # eyes pure RED, nose pure GREEN, nothing drawn inside them


def _jitter(rng, palette, amount=14.0):
    base = palette[rng.integers(len(palette))]
    return np.clip(base + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


# Shape ranges in canonical units (uniform draws). The frame's half-width is 1.
_SHAPE_RANGES = {
    "head_cy": (0.06, 0.1),
    "head_rx": (0.58, 0.68),
    "head_ry": (0.5, 0.6),
    "ear_angle": (0.55, 0.75),
    "ear_half_width": (0.28, 0.38),
    "ear_length": (0.3, 0.4),
    "eye_dx": (0.22, 0.28),
    "eye_dy": (-0.08, 0.0),
    "eye_radius": (0.1, 0.125),
    "nose_dy": (0.14, 0.19),
    "nose_size": (0.055, 0.08),
    "mouth_dy": (0.13, 0.18),  # drawn as a gap below the nose, stored relative to head_cy
    "mouth_half_width": (0.11, 0.17),
    "mouth_curve": (-0.01, 0.055),
}


def sample_face(rng: np.random.Generator, solid: bool = False) -> Face:
    lo, hi = np.array(list(_SHAPE_RANGES.values())).T
    shape = dict(zip(_SHAPE_RANGES, (lo + (hi - lo) * rng.random(len(lo))).tolist(), strict=True))
    shape["mouth_dy"] += shape["nose_dy"]
    u = rng.uniform
    fur = _jitter(rng, _FUR)
    lighter = 0.5 * fur + np.float32(120)
    return Face(
        **shape,
        round_ears=bool(rng.random() < 0.35),
        eye_style=int(rng.integers(3)),
        triangle_nose=bool(rng.random() < 0.6),
        fur=fur,
        outline=(fur * 0.4).astype(np.float32),
        inner_ear=_jitter(rng, _INNER_EAR) if rng.random() < 0.7 else lighter,
        iris=_jitter(rng, _IRIS, 20.0),
        nose=_jitter(rng, _NOSE),
        # A dark face always gets a light muzzle, or its mouth would not show.
        muzzle=lighter if (fur.mean() < 100 or rng.random() < 0.6) else None,
        pattern=int(rng.choice(3, p=[0.4, 0.35, 0.25])),
        pattern_color=(fur * u(0.45, 0.65)).astype(np.float32),
        stripes=np.array([u(16.0, 23.0), u(-0.3, 0.3), u(0, 2 * np.pi)]),
        spots=np.stack([u(-0.45, 0.45, 3), u(-0.35, 0.45, 3), u(0.09, 0.18, 3)], axis=-1),
        eye_patch=(fur * 0.35).astype(np.float32) if rng.random() < 0.25 else None,
        solid=solid,
    )


def mean_face() -> Face:
    """The face at the middle of every shape range (used for canonical keypoints)."""
    shape = {name: 0.5 * (lo + hi) for name, (lo, hi) in _SHAPE_RANGES.items()}
    shape["mouth_dy"] += shape["nose_dy"]
    grey = np.full(3, 128, np.float32)
    return Face(
        **shape,
        round_ears=False,
        eye_style=0,
        triangle_nose=True,
        **dict.fromkeys(("fur", "outline", "inner_ear", "iris", "nose", "pattern_color"), grey),
        muzzle=None,
        pattern=0,
        stripes=np.zeros(3),
        spots=np.zeros((0, 3)),
        eye_patch=None,
        solid=False,
    )


def _boundary_radius(face: Face, angle):
    """Distance from the head centre to its boundary along (sin a, -cos a)."""
    return 1.0 / np.sqrt((np.sin(angle) / face.head_rx) ** 2 + (np.cos(angle) / face.head_ry) ** 2)


def _ear_shapes(face: Face):
    """Per ear (left, right): tip (2,) and either a triangle (3, 2) or an ellipse (cx, cy, rx, ry, a)."""
    shapes = []
    for side in (-1.0, 1.0):
        angle = side * face.ear_angle
        direction = np.array([np.sin(angle), -np.cos(angle)])
        centre = np.array([0.0, face.head_cy])
        base_r = _boundary_radius(face, angle)
        tip = centre + (base_r + face.ear_length) * direction
        if face.round_ears:
            half_len = 0.6 * face.ear_length
            mid = tip - half_len * direction
            width = 0.9 * base_r * face.ear_half_width
            shapes.append((tip, (mid[0], mid[1], width, half_len, angle)))
        else:
            base = []
            for da in (-face.ear_half_width, face.ear_half_width):
                a = angle + da
                base.append(
                    centre + 0.9 * _boundary_radius(face, a) * np.array([np.sin(a), -np.cos(a)])
                )
            shapes.append((tip, np.stack([base[0], tip, base[1]])))
    return shapes


def face_keypoints(face: Face) -> np.ndarray:
    """(P, 2) canonical keypoints in the order of procedural.KEYPOINT_NAMES."""
    cy = face.head_cy
    (left_tip, _), (right_tip, _) = _ear_shapes(face)
    eye_y = cy + face.eye_dy
    cheek_x = face.head_rx * np.sqrt(1.0 - (face.eye_dy / face.head_ry) ** 2)
    mouth_y = cy + face.mouth_dy
    corner_y = mouth_y - face.mouth_curve
    return np.array(
        [
            left_tip,
            right_tip,
            (-face.eye_dx, eye_y),
            (face.eye_dx, eye_y),
            (0.0, cy + face.nose_dy),
            (-face.mouth_half_width, corner_y),
            (face.mouth_half_width, corner_y),
            (0.0, mouth_y),
            (0.0, cy + face.head_ry),
            (-cheek_x, eye_y),
            (cheek_x, eye_y),
            (0.0, cy - face.head_ry),
        ],
        np.float64,
    )


def face_outline(face: Face) -> np.ndarray:
    """(K, 2) canonical points on the silhouette (head and ears), for bounding boxes."""
    t = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
    points = [np.stack([face.head_rx * np.cos(t), face.head_cy + face.head_ry * np.sin(t)], -1)]
    for _, shape in _ear_shapes(face):
        if face.round_ears:
            cx, cy, rx, ry, a = shape
            ex, ey = rx * np.cos(t), ry * np.sin(t)
            c, s = np.cos(a), np.sin(a)
            points.append(np.stack([cx + c * ex - s * ey, cy + s * ex + c * ey], -1))
        else:
            points.append(shape)
    return np.concatenate(points)


# ---- the face ----

_LINE = 0.035  # outline width in canonical units


def _draw_ears(canvas: Canvas, face: Face):
    for _, shape in _ear_shapes(face):
        if face.round_ears:
            cx, cy, rx, ry, a = shape
            box = box_around(cx, cy, max(rx, ry), max(rx, ry))
            fill = partial(ellipse_sdf, cx=cx, cy=cy, rx=rx, ry=ry, angle=a)
            inner = partial(ellipse_sdf, cx=cx, cy=cy + 0.03, rx=0.55 * rx, ry=0.6 * ry, angle=a)
        else:
            box = points_box(shape)
            fill = partial(polygon_sdf, vertices=shape)
            centre = shape.mean(axis=0) + np.array([0.0, 0.03])
            inner = partial(polygon_sdf, vertices=centre + 0.55 * (shape - centre))
        canvas.draw(box, fill, face.fur, outline=face.outline, width=_LINE)
        canvas.draw(box, inner, face.inner_ear)


def _draw_head(canvas: Canvas, face: Face):
    cy, rx, ry = face.head_cy, face.head_rx, face.head_ry
    head = partial(ellipse_sdf, cx=0.0, cy=cy, rx=rx, ry=ry)
    box = box_around(0.0, cy, rx, ry)

    def shaded_fur(x, y):  # soft radial shading gives the head some volume
        radial = (x * np.float32(1 / rx)) ** 2 + ((y - np.float32(cy)) * np.float32(1 / ry)) ** 2
        shade = np.clip(np.float32(1.08) - np.float32(0.2) * radial, 0.8, 1.1)
        return np.minimum(shade * face.fur[:, None, None], np.float32(255))

    canvas.draw(box, head, shaded_fur, outline=face.outline, width=_LINE)
    if face.pattern == 1:
        freq, angle, phase = (np.float32(v) for v in face.stripes)
        c, s = np.cos(angle), np.sin(angle)
        top = np.float32(cy + face.eye_dy - 0.08)

        def stripes(x, y):
            wave = np.sin(freq * (c * x + s * y) + phase)
            return np.clip(wave * 3 - 1, 0, 1) * np.clip((top - y) * 8, 0, 1)

        canvas.draw((-rx, cy - ry, rx, top), head, face.pattern_color, mask_fn=stripes)
    elif face.pattern == 2:
        for sx, sy, sr in face.spots:
            spot = partial(ellipse_sdf, cx=sx, cy=cy + sy, rx=sr, ry=0.8 * sr)
            canvas.draw(box_around(sx, cy + sy, sr, sr), spot, face.pattern_color, clip_fn=head)
    if face.eye_patch is not None:
        ex, ey, r = -face.eye_dx, cy + face.eye_dy, face.eye_radius
        patch = partial(ellipse_sdf, cx=ex, cy=ey, rx=1.9 * r, ry=1.6 * r)
        canvas.draw(box_around(ex, ey, 1.9 * r, 1.9 * r), patch, face.eye_patch, clip_fn=head)
    if face.muzzle is not None:
        my = cy + face.nose_dy + 0.09
        for side in (-1.0, 1.0):
            mx, mrx = side * 0.165 * rx, 0.235 * rx
            puff = partial(ellipse_sdf, cx=mx, cy=my, rx=mrx, ry=0.115)
            canvas.draw(box_around(mx, my, mrx, mrx), puff, face.muzzle)


def _draw_eyes(canvas: Canvas, face: Face):
    r = face.eye_radius
    ey = face.head_cy + face.eye_dy
    for side in (-1.0, 1.0):
        ex = side * face.eye_dx

        def disc(rx, ry, dx=0.0, dy=0.0, ex=ex):
            return partial(ellipse_sdf, cx=ex + dx, cy=ey + dy, rx=rx, ry=ry)

        box = box_around(ex, ey, r, r)
        rim = face.outline * 0.5
        if face.solid:
            canvas.draw(box, disc(r, r), RED, outline=rim, width=0.025)
            continue
        iris = (20, 18, 18) if face.eye_style == 2 else face.iris
        canvas.draw(box, disc(r, r), iris, outline=rim, width=0.025)
        if face.eye_style == 0:
            canvas.draw(box, disc(0.3 * r, 0.85 * r), (15, 12, 12))
        elif face.eye_style == 1:
            canvas.draw(box, disc(0.5 * r, 0.5 * r), (15, 12, 12))
        canvas.draw(box, disc(0.28 * r, 0.28 * r, -0.35 * r, -0.35 * r), (250, 250, 250))


def _draw_nose_and_mouth(canvas: Canvas, face: Face):
    ny, size = face.head_cy + face.nose_dy, face.nose_size
    if face.triangle_nose:  # centroid at the keypoint
        tri = np.array([(-size, ny - 0.5 * size), (size, ny - 0.5 * size), (0.0, ny + size)])
        nose, bottom = partial(polygon_sdf, vertices=tri), ny + size
    else:
        nose = partial(ellipse_sdf, cx=0.0, cy=ny, rx=size, ry=0.75 * size)
        bottom = ny + 0.75 * size
    mouth_y = face.head_cy + face.mouth_dy
    corners = [(side * face.mouth_half_width, mouth_y - face.mouth_curve) for side in (-1, 1)]
    stroke = np.float32(0.022)

    def mouth(x, y):
        lines = capsule_sdf(x, y, (0.0, bottom), (0.0, mouth_y), stroke)
        for corner in corners:
            lines = np.minimum(lines, capsule_sdf(x, y, (0.0, mouth_y), corner, stroke))
        return lines

    canvas.draw(
        points_box([(0.0, bottom), (0.0, mouth_y), *corners], stroke),
        mouth,
        face.outline * 0.6,
    )
    canvas.draw(box_around(0.0, ny, size, size), nose, GREEN if face.solid else face.nose)


def draw_face(canvas: Canvas, face: Face) -> None:
    """Paint the face into a canvas whose coordinates are canonical."""
    _draw_ears(canvas, face)
    _draw_head(canvas, face)
    _draw_eyes(canvas, face)
    _draw_nose_and_mouth(canvas, face)


# ---- backgrounds ----


@functools.lru_cache(maxsize=16)
def _bilinear_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) weights that linearly interpolate knots spread over the frame."""
    pos = np.linspace(0.0, knots - 1.0, size)
    lo = np.minimum(np.floor(pos).astype(int), knots - 2)
    frac = pos - lo
    m = np.zeros((size, knots), np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


@functools.lru_cache(maxsize=16)
def _frame_grid(resolution: int):
    """Normalized coordinates (the frame spans [-1, 1]) of the pixel centres: x, y (H, W)."""
    centres = (np.arange(resolution, dtype=np.float32) * 2 + 1) / resolution - 1
    x, y = np.meshgrid(centres, centres)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _muted(rng, count=None):
    """Colours (3,) or (count, 3) pulled part of the way from a random grey to a random hue."""
    shape = (3,) if count is None else (count, 3)
    grey = rng.uniform(70, 190, shape[:-1] + (1,))
    strength = rng.uniform(0.25, 0.55, shape[:-1] + (1,))
    return (grey + strength * (rng.uniform(0, 255, shape) - grey)).astype(np.float32)


def background(rng: np.random.Generator, resolution: int, clutter_range) -> np.ndarray:
    """(3, H, W) float32: smooth colour field, optional faint texture, and muted clutter shapes."""
    m = _bilinear_matrix(resolution, 3)
    knots = _muted(rng, 9).reshape(3, 3, 3)
    image = np.stack([m @ knots[..., c] @ m.T for c in range(3)])  # (3, H, W)
    x, y = _frame_grid(resolution)
    if rng.random() < 0.6:  # stripes or checks
        a, period = rng.uniform(0, np.pi), rng.uniform(0.15, 0.35)
        k = np.float32(2 * np.pi / period)
        c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
        wave = np.sin((c * x + s * y) * k)
        if rng.random() < 0.5:
            wave = wave * np.sin((c * y - s * x) * k)
        image += np.float32(rng.uniform(5, 12)) * np.sign(wave)
    half = resolution / 2.0
    canvas = Canvas(image, x, y, 2.0 / resolution, [(half, 0, half - 0.5), (0, half, half - 0.5)])
    for _ in range(int(rng.integers(clutter_range[0], clutter_range[1] + 1))):
        kind = rng.integers(3)
        cx, cy = rng.uniform(-1, 1, 2)
        size = rng.uniform(0.1, 0.35)
        if kind == 0:
            sdf = partial(ellipse_sdf, cx=cx, cy=cy, rx=size, ry=size)
            box = box_around(cx, cy, size, size)
        elif kind == 1:
            half_sides = (size, size * rng.uniform(0.4, 1))
            corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * half_sides
            a = rng.uniform(0, np.pi)
            rotation = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
            corners = corners @ rotation + (cx, cy)
            sdf, box = partial(polygon_sdf, vertices=corners), points_box(corners)
        else:
            end = np.array([cx, cy]) + rng.uniform(-0.9, 0.9, 2)
            width = rng.uniform(0.02, 0.05)
            sdf = partial(capsule_sdf, a=(cx, cy), b=end, radius=width)
            box = points_box([(cx, cy), end], width)
        canvas.draw(box, sdf, _muted(rng), alpha=rng.uniform(0.5, 0.9))
    return image
