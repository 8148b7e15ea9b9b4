"""Reading images of any common flavour as 8-bit RGB, and fitting them into a square frame.

`load_rgb` turns every PIL mode into (H, W, 3) uint8: grayscale and 1-bit images are repeated over
the channels, transparent images (RGBA, LA, P with a transparent index) are composited over a
background colour, CMYK is converted, 16-bit and float images are rescaled to 0..255 rather than
truncated, and the EXIF orientation tag is applied. Anything that cannot be decoded raises
`ImageReadError`, which names the file.

`pad_and_resize` implements the reference's square-fitting modes with Lanczos resampling and
returns the pixel transform that maps annotations into the result: new = old * scale + offset,
the same mapping the reference applies to keypoints (no half-pixel shift).
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gangealing_jax.errors import InputFileError

PAD_MODES = ("center", "border", "zero", "resize_small_side", "none")
WHITE = (255, 255, 255)
_LANCZOS = Image.Resampling.LANCZOS


class ImageReadError(InputFileError):
    """A file that is not a readable image. `path` and `reason` are kept as attributes."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot read image {self.path}: {reason}. Re-export or re-download the file, "
            "or remove it from the input."
        )


class ResizedImage(NamedTuple):
    """An image fitted to size x size and the map new = old * (scale_x, scale_y) + offset.

    The scales differ only for mode 'none' on a non-square input; `scale` is the common value.
    """

    image: np.ndarray  # (size, size, 3) uint8
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    @property
    def scale(self) -> float:
        if self.scale_x != self.scale_y:
            raise ValueError(
                f"the resize is anisotropic (scale x {self.scale_x}, y {self.scale_y}); "
                "use scale_x and scale_y"
            )
        return self.scale_x

    def map_points(self, points) -> np.ndarray:
        """(..., 2 or 3) source pixel (x, y[, visible]) -> the same in the resized image."""
        out = np.array(points, np.float32, copy=True)
        out[..., 0] = out[..., 0] * self.scale_x + self.offset_x
        out[..., 1] = out[..., 1] * self.scale_y + self.offset_y
        return out


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth single-channel pixels -> uint8 over the full range."""
    if mode == "F":
        array = array.astype(np.float64)
        finite = array[np.isfinite(array)]
        top = finite.max() if finite.size else 0.0
        # Float images are either 0..1 (most writers) or already on the 0..255 scale.
        scaled = array * 255.0 if top <= 1.0 else array
        return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    # I;16 variants hold 0..65535; PIL's 32-bit "I" mode is what older Pillows use for 16-bit
    # PNG and TIFF files, so it gets the same 16-bit scale.
    wide = np.clip(array.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _composite(rgba: Image.Image, background) -> np.ndarray:
    pixels = np.asarray(rgba, np.float32)
    alpha = pixels[..., 3:4] / 255.0
    bg = np.asarray(background, np.float32).reshape(1, 1, 3)
    return np.clip(pixels[..., :3] * alpha + bg * (1.0 - alpha), 0, 255).round().astype(np.uint8)


def _as_rgb(image: Image.Image, background) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8(np.asarray(image), mode)
        return np.repeat(gray[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info and mode in ("P", "L", "RGB", "1")
    )
    if has_alpha:
        return _composite(image.convert("RGBA"), background)
    return np.asarray(image.convert("RGB"), np.uint8)


def load_rgb(
    path: str, background=WHITE, apply_exif_orientation: bool = True, max_pixels: int | None = None
) -> np.ndarray:
    """Read `path` as (H, W, 3) uint8 RGB; raises ImageReadError for unreadable files.

    background: RGB colour that transparent pixels are composited over (white by default).
    apply_exif_orientation: rotate/flip as the EXIF orientation tag says (what viewers show).
    Keypoint datasets annotate the stored pixel grid, so they read with this off, as the
    reference does. Multi-frame files give their first frame.
    max_pixels: refuse larger images from their header alone, before any pixel is decoded (a
    9500 x 9500 PNG decodes to 270 MB of RGB, and prepare_data decodes several at once).
    """
    if not os.path.isfile(path):
        raise ImageReadError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageReadError(
                        path, f"{width}x{height} is over the limit of {max_pixels} pixels"
                    )
                image.load()  # decode now: truncation and corrupt data surface here
                if apply_exif_orientation:
                    image = ImageOps.exif_transpose(image)
                return np.ascontiguousarray(_as_rgb(image, background))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file PIL recognises") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(path, f"refused as too large ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError) as err:
        raise ImageReadError(path, str(err) or type(err).__name__) from None


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), _LANCZOS))


def resize_shorter_side(image: np.ndarray, size: int) -> ResizedImage:
    """Keep the aspect ratio; the shorter side becomes `size`, the longer floor(long*size/short).

    This is the reference's 'resize_small_side' (it keeps the whole, non-square frame).
    """
    h, w = image.shape[:2]
    if w < h:
        new_w, new_h = size, h * size // w
    else:
        new_w, new_h = w * size // h, size
    scale = size / min(h, w)
    return ResizedImage(_resize(image, new_w, new_h), scale, scale, 0.0, 0.0)


def _fit_long_side(image: np.ndarray, size: int, fill: str) -> ResizedImage:
    """Long side -> size (short side rounded), then pad the short side to size."""
    h, w = image.shape[:2]
    if h <= w:
        new_w, new_h = size, max(1, int(np.around(size * h / w)))
    else:
        new_w, new_h = max(1, int(np.around(size * w / h))), size
    resized = _resize(image, new_w, new_h)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    pad = ((top, size - new_h - top), (left, size - new_w - left), (0, 0))
    padded = np.pad(resized, pad, mode="edge" if fill == "border" else "constant")
    # The reference maps keypoints with size / long side, not the rounded short-side ratio.
    scale = size / max(h, w)
    return ResizedImage(padded, scale, scale, float(left), float(top))


def pad_and_resize(image: np.ndarray, size: int, mode: str) -> ResizedImage:
    """Fit (H, W, 3) uint8 into (size, size, 3) as the reference's --pad modes do.

    center: centre crop to the shorter side, then resize (the StyleGAN2 LSUN recipe).
    border: resize the longer side to size, then pad the shorter one replicating edge pixels.
    zero: the same with black bars.
    resize_small_side: resize the shorter side to size, then centre crop the longer one (the
        reference keeps the full non-square frame here; a prepared dataset needs squares).
    none: plain resize to size x size (the reference stores the image untouched; a prepared
        dataset needs one resolution), anisotropic when the input is not square.
    All resampling is Lanczos, as the reference's ANTIALIAS filter.
    """
    h, w = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or h < 1 or w < 1:
        raise ValueError(f"expected a non-empty (H, W, 3) image, got shape {image.shape}")
    if mode == "center":
        crop = min(h, w)
        top, left = (h - crop) // 2, (w - crop) // 2
        cropped = image[top : top + crop, left : left + crop]
        scale = size / crop
        return ResizedImage(_resize(cropped, size, size), scale, scale, -left * scale, -top * scale)
    if mode in ("border", "zero"):
        return _fit_long_side(image, size, mode)
    if mode == "resize_small_side":
        resized = resize_shorter_side(image, size)
        rh, rw = resized.image.shape[:2]
        top, left = (rh - size) // 2, (rw - size) // 2
        return resized._replace(
            image=resized.image[top : top + size, left : left + size],
            offset_x=float(-left),
            offset_y=float(-top),
        )
    if mode == "none":
        return ResizedImage(_resize(image, size, size), size / w, size / h, 0.0, 0.0)
    raise ValueError(f"unknown pad mode {mode!r}; choose one of {PAD_MODES}")


def crop_box_and_resize(image: np.ndarray, box, size: int) -> ResizedImage:
    """Crop the square box (x0, y0, x1, y1), inclusive integer pixel bounds, then resize.

    Parts of the box outside the image repeat the edge pixels, as ACSM's CUB crop does.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    side = x1 - x0 + 1
    if side != y1 - y0 + 1 or side < 1:
        raise ValueError(f"crop box {list(box)} is not a non-empty square")
    h, w = image.shape[:2]
    rows = np.clip(np.arange(y0, y1 + 1), 0, h - 1)
    cols = np.clip(np.arange(x0, x1 + 1), 0, w - 1)
    cropped = np.ascontiguousarray(image[rows][:, cols])
    scale = size / side
    return ResizedImage(_resize(cropped, size, size), scale, scale, -x0 * scale, -y0 * scale)
