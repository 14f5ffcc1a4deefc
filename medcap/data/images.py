"""Robust image loading and open_clip preprocessing.

Medical images arrive as 8-bit grayscale, 16-bit grayscale (CT/MR exports), palette, CMYK, RGBA
and the odd truncated file. :func:`load_image` returns an RGB PIL image or raises
:class:`ImageLoadError` with the reason; nothing else leaks out of PIL.

Decided and documented (README_FINETUNE.md, data): a multi-frame file (animated GIF, multi-page
TIFF) gives its first frame; a tiny image (even 1x1) is upscaled by the transform like any other.
``tools/validate_dataset.py`` warns about both. Loading is torch-free (open_clip is imported only
for the transform).
"""

import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import PIL.Image

# PIL's own default bound (~89.5 MP); larger images are refused before any pixel is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# CLIP's normalisation (open_clip.constants.OPENAI_DATASET_MEAN / _STD)
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageLoadError(ValueError):
    """An image that is missing, unreadable, truncated, or too large."""


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """Open, fully decode and convert an image to 8-bit RGB.

    Conversions: grayscale/palette -> RGB; 16-bit and float grayscale -> min-max windowed to 8 bit;
    CMYK -> RGB; images with alpha are composited onto black (the background of most scans); a
    multi-frame file gives its first frame.

    Args:
        path (Path): image file.
        max_pixels (int): refuse larger images (decompression-bomb guard), checked from the header.

    Returns:
        PIL.Image.Image: an RGB image.

    Raises:
        ImageLoadError: missing, undecodable, truncated or too large.
    """
    return read_image(path, max_pixels)[0]


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Tuple[PIL.Image.Image, int]:
    """:func:`load_image`, plus the file's number of frames (1 for a still image)."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"image too large: {width}x{height} = {width * height} pixels exceeds max_image_pixels={max_pixels} "
                    f"(possible decompression bomb): {path}"
                )
            if width < 1 or height < 1:
                raise ImageLoadError(f"cannot decode image {path}: it has no pixels ({width}x{height})")
            frames = getattr(image, "n_frames", 1)
            image.load()
            return _to_rgb(image), frames
    except ImageLoadError:
        raise
    except PIL.Image.DecompressionBombError as error:  # PIL refuses > 2x its bound before our header check
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(pixels.group(1))} pixels" if pixels else "more pixels than PIL opens"
        raise ImageLoadError(
            f"image too large: {size} exceeds max_image_pixels={min(max_pixels, 2 * PIL.Image.MAX_IMAGE_PIXELS)} "
            f"(possible decompression bomb): {path}"
        ) from None
    except MemoryError:
        raise ImageLoadError(f"cannot decode image {path}: out of memory while decoding") from None
    except Exception as error:  # PIL's plugins raise OSError, ValueError, SyntaxError, struct.error, EOFError ...
        raise ImageLoadError(f"cannot decode image {path}: {type(error).__name__}: {error}") from error


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return PIL.Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_clip_image_transform(
    image_size: int = 224,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    train_augmentation: bool = False,
) -> Callable:
    """open_clip's preprocessing (BiomedCLIP's by default).

    Eval: resize the short side to ``image_size`` (bicubic), center crop, CLIP mean/std. With
    ``train_augmentation`` open_clip's train transform: random resized crop (scale 0.9-1.0, bicubic).

    Args:
        image_size (int): output side.
        mean (Optional[Sequence[float]]): per-channel mean; CLIP's by default.
        std (Optional[Sequence[float]]): per-channel std; CLIP's by default.
        train_augmentation (bool): use the train-time transform.

    Returns:
        Callable: PIL image -> ``[3, image_size, image_size]`` float tensor.
    """
    import open_clip  # torch; only the transform needs it

    return open_clip.image_transform(
        image_size,
        is_train=train_augmentation,
        mean=tuple(mean or OPENAI_DATASET_MEAN),
        std=tuple(std or OPENAI_DATASET_STD),
        interpolation="bicubic",
        resize_mode="shortest",
    )
