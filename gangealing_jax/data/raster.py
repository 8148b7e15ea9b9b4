"""Anti-aliased rasterisation of shapes given by signed distance fields (numpy only).

A shape is a function sdf(x, y) of per-pixel coordinate arrays, negative inside. Coverage fades
linearly over one pixel across the boundary, so edges are anti-aliased whatever coordinates the
pixels carry: the same code draws in a warped canonical frame and in the image frame.
"""

from __future__ import annotations

import math

import numpy as np


def ellipse_sdf(x, y, cx, cy, rx, ry, angle=0.0):
    """Approximate signed distance (first order; exact along the axes)."""
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    if rx == ry:  # a circle: the exact distance is cheaper
        distance = np.sqrt(dx * dx + dy * dy)
        distance -= np.float32(rx)
        return distance
    if angle:
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        dx, dy = c * dx + s * dy, c * dy - s * dx
    qx, qy = dx * np.float32(1 / rx), dy * np.float32(1 / ry)
    f = np.sqrt(qx * qx + qy * qy)
    g = np.sqrt((qx * np.float32(1 / rx)) ** 2 + (qy * np.float32(1 / ry)) ** 2)
    eps = np.float32(1e-4)  # f / g lies in [min r, max r]; the eps terms pick min r at the centre
    return (f - 1) * (f + eps * np.float32(min(rx, ry))) / (g + eps)


def polygon_sdf(x, y, vertices):
    """Signed distance to a convex polygon (K, 2): the largest signed distance to its edge lines."""
    vertices = [(float(vx), float(vy)) for vx, vy in vertices]
    mx = sum(v[0] for v in vertices) / len(vertices)
    my = sum(v[1] for v in vertices) / len(vertices)
    sdf = None
    for (ax, ay), (bx, by) in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        length = math.hypot(bx - ax, by - ay)
        nx, ny = (by - ay) / length, (ax - bx) / length
        if nx * (mx - ax) + ny * (my - ay) > 0:  # make the normal point outwards
            nx, ny = -nx, -ny
        d = np.float32(nx) * x + np.float32(ny) * y
        d -= np.float32(nx * ax + ny * ay)
        sdf = d if sdf is None else np.maximum(sdf, d, out=sdf)
    return sdf


def capsule_sdf(x, y, a, b, radius):
    ax, ay = np.float32(a[0]), np.float32(a[1])
    bx, by = np.float32(b[0] - a[0]), np.float32(b[1] - a[1])
    px, py = x - ax, y - ay
    h = (px * bx + py * by) * np.float32(1 / (bx * bx + by * by))
    h = np.minimum(np.maximum(h, np.float32(0), out=h), np.float32(1), out=h)
    return np.sqrt((px - h * bx) ** 2 + (py - h * by) ** 2) - np.float32(radius)


def coverage(sdf, inv_pixel_size):
    """Anti-aliased coverage in [0, 1]: 1 inside, fading over one pixel across the boundary."""
    cover = np.float32(0.5) - sdf * inv_pixel_size
    return np.minimum(np.maximum(cover, np.float32(0), out=cover), np.float32(1), out=cover)


def box_around(cx, cy, rx, ry):
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def points_box(points, pad=0.0):
    points = np.asarray(points)
    return (*(points.min(axis=0) - pad), *(points.max(axis=0) + pad))


class Canvas:
    """A (3, H, W) float32 image, the drawing coordinates x, y of its pixel centres, and the
    affine map from drawing coordinates to pixels, used to paint each shape only in its window.

    slack: how far (drawing units) the true coordinates may stray from the affine map's inverse.
    """

    def __init__(self, image, x, y, pixel_size, affine, slack=0.0):
        self.image, self.x, self.y = image, x, y
        self.pixel_size = np.float32(pixel_size)
        self.affine = [[float(v) for v in row] for row in affine]  # (2, 3): pixel = A @ (x, y, 1)
        self.slack = slack

    def window(self, box):
        """Row and column slices of the pixels that a shape inside `box` can touch."""
        s = self.slack
        x0, y0, x1, y1 = box[0] - s, box[1] - s, box[2] + s, box[3] + s
        (a, b, c), (d, e, f) = self.affine
        h, w = self.x.shape
        margin = 2.0  # anti-aliasing reaches half a pixel; the rest covers sdf approximations
        cols = (
            c + min(a * x0, a * x1) + min(b * y0, b * y1) - margin,
            c + max(a * x0, a * x1) + max(b * y0, b * y1) + margin,
        )
        rows = (
            f + min(d * x0, d * x1) + min(e * y0, e * y1) - margin,
            f + max(d * x0, d * x1) + max(e * y0, e * y1) + margin,
        )
        return (
            slice(max(math.floor(rows[0]), 0), min(math.ceil(rows[1]) + 1, h)),
            slice(max(math.floor(cols[0]), 0), min(math.ceil(cols[1]) + 1, w)),
        )

    def draw(
        self, box, sdf_fn, color, *, outline=None, width=0.0, clip_fn=None, mask_fn=None, alpha=1.0
    ):
        """Blend `color` (RGB, or a function of x, y giving (3, h, w)) where sdf_fn(x, y) < 0.

        outline: colour of a rim `width` wide drawn around the shape first.
        clip_fn: a second shape the fill is confined to; mask_fn(x, y): extra opacity in [0, 1].
        """
        if outline is not None:
            box = (box[0] - width, box[1] - width, box[2] + width, box[3] + width)
        rows, cols = self.window(box)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return
        x, y = self.x[rows, cols], self.y[rows, cols]
        target = self.image[:, rows, cols]  # a view: blending writes through
        inv_px = np.float32(1.0 / self.pixel_size)
        sdf = sdf_fn(x, y)
        if outline is not None:
            blend(target, coverage(sdf - np.float32(width), inv_px), outline)
        cover = coverage(sdf, inv_px)
        if clip_fn is not None:
            cover = np.minimum(cover, coverage(clip_fn(x, y), inv_px), out=cover)
        if mask_fn is not None:
            cover *= mask_fn(x, y)
        if alpha != 1.0:
            cover *= np.float32(alpha)
        blend(target, cover, color(x, y) if callable(color) else color)


def blend(target, cover, color):
    """target (3, h, w) <- cover * color + (1 - cover) * target, in place."""
    color = np.asarray(color, np.float32)
    difference = target - (color.reshape(3, 1, 1) if color.ndim == 1 else color)
    difference *= cover
    target -= difference
