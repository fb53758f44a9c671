"""Reading one image file as RGB, whatever its mode, orientation or size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# The extensions torchvision's ImageFolder accepts. GIF is left out on purpose: in hymenoptera
# (and many scraped sets) a .gif is a "not found" placeholder, not a photo of the class.
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


def load_rgb(path: str | Path, min_short_side: int | None = None) -> Image.Image:
    """Decode ``path`` to an upright RGB image.

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
            return _to_rgb(img)


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
    except Image.DecompressionBombError as e:
        return f"too large: {e} Downscale the file."
    except Exception as e:  # UnidentifiedImageError, truncated data, OS errors
        return str(e) or type(e).__name__
    return None
