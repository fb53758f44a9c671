"""Reading one image file as RGB, whatever its mode, orientation or size."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# The extensions torchvision's ImageFolder accepts. GIF is left out on purpose: in hymenoptera
# (and many scraped sets) a .gif is a "not found" placeholder, not a photo of the class.
log = logging.getLogger("tlx")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels carry arbitrary colours: composite on white, as a viewer shows them.
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1, F


# Resizing the short side to ~224 px scales the long side by as much: a 1x12000 px strip (130 bytes
# of PNG) becomes 224x2.7M px, gigabytes. Strips longer than this ratio are centre-cropped to it.
MAX_ASPECT_RATIO = 20
_cropped: set[str] = set()  # warned about once per process


def bound_aspect(img: Image.Image, path: str | Path) -> Image.Image:
    """Centre-crop ``img`` to at most :data:`MAX_ASPECT_RATIO`:1, with a warning naming the file."""
    w, h = img.size
    short = max(1, min(w, h))
    if max(w, h) <= MAX_ASPECT_RATIO * short:
        return img
    if str(path) not in _cropped:
        _cropped.add(str(path))
        log.warning("%s is %dx%d px (more than %d:1): centre-cropped to %d:1 so that resizing it stays bounded.",
                    path, w, h, MAX_ASPECT_RATIO, MAX_ASPECT_RATIO)
    long = MAX_ASPECT_RATIO * short
    if w > h:
        left = (w - long) // 2
        return img.crop((left, 0, left + long, h))
    top = (h - long) // 2
    return img.crop((0, top, w, top + long))


def load_rgb(path: str | Path, min_short_side: int | None = None) -> Image.Image:
    """Decode ``path`` to an upright RGB image (extreme strips cropped: :func:`bound_aspect`).

    ``min_short_side`` lets JPEG decoding skip detail that resizing would throw away anyway
    (DCT scaling via ``draft``): a 2592 px photo decodes several times faster at 1/4 scale.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # EXIF/palette chatter; real errors still raise
        with Image.open(path) as img:
            if min_short_side and img.format == "JPEG":
                img.draft("RGB", (min_short_side, min_short_side))
            img = ImageOps.exif_transpose(img)
            img.load()
            return _to_rgb(bound_aspect(img, path))


def check_image(path: str | Path) -> str | None:
    """Return why ``path`` cannot be used as an image, or ``None`` when it decodes fully."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (32, 32))  # full decode, at 1/8 scale: finds truncation cheaply
                img.load()
                img.getexif()  # what load_rgb's exif_transpose parses: a broken EXIF block fails here, not mid-epoch
    except Image.DecompressionBombError as e:
        return f"too large: {e} Downscale the file."
    except Exception as e:  # UnidentifiedImageError, truncated data, OS errors
        return str(e) or type(e).__name__
    return None
