"""Offline image preprocessing, as medcap does before training: pad elongated images to a square,
resize the short side (bicubic) and center crop, so training skips decoding full-size images.

The resize and crop follow torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on PIL images
(BiomedCLIP's eval transform without ``ToTensor`` / ``Normalize``), pixel for pixel.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageOps
from tqdm import tqdm

from medcap.utils.atomic import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def pad_to_square(image: Image.Image, max_aspect_ratio: float = 1.8) -> Image.Image:
    """Pads with black to a centred square when ``long side / short side > max_aspect_ratio``,
    so center cropping keeps the whole of very wide or tall images."""
    width, height = image.size
    long_side, short_side = max(width, height), min(width, height)
    if short_side == 0 or long_side / short_side <= max_aspect_ratio:
        return image
    left, top = (long_side - width) // 2, (long_side - height) // 2
    return ImageOps.expand(image, border=(left, top, long_side - width - left, long_side - height - top))


def resize_center_crop(image: Image.Image, size: int = 224) -> Image.Image:
    """Resizes the short side to ``size`` (bicubic), then crops the centre ``size`` x ``size``."""
    width, height = image.size
    short_side, long_side = min(width, height), max(width, height)
    new_long = int(size * long_side / short_side)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    image = image.resize((new_width, new_height), Image.BICUBIC)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess_image(image: Image.Image, size: int = 224, max_aspect_ratio: float = 1.8) -> Image.Image:
    """RGB, pad elongated images to a square, resize the short side and center crop.

    Args:
        image (Image.Image): any PIL image.
        size (int): output side.
        max_aspect_ratio (float): pad to a square above this aspect ratio.

    Returns:
        Image.Image: an RGB image of ``size`` x ``size``.
    """
    return resize_center_crop(pad_to_square(image.convert("RGB"), max_aspect_ratio), size)


def is_up_to_date(source: str, target: str, size: int) -> bool:
    """The target exists, is not older than the source and already has the output size."""
    if not os.path.exists(target) or os.path.getmtime(target) < os.path.getmtime(source):
        return False
    try:
        with Image.open(target) as image:
            return image.size == (size, size)
    except Exception:  # a truncated or foreign file is redone
        return False


def preprocess_file(
    source_and_target: Tuple[str, str], size: int = 224, max_aspect_ratio: float = 1.8, quality: int = 95,
    overwrite: bool = False,
) -> Tuple[str, str]:
    """Preprocesses one image file, writing the target with :func:`medcap.utils.atomic.atomic_write`.

    Args:
        source_and_target (Tuple[str, str]): input and output paths.
        size (int): output side.
        max_aspect_ratio (float): pad to a square above this aspect ratio.
        quality (int): JPEG quality.
        overwrite (bool): redo targets that are up to date.

    Returns:
        Tuple[str, str]: ``(source, "written" | "skipped" | "failed: <reason>")``.
    """
    source, target = source_and_target
    if not overwrite and is_up_to_date(source, target, size):
        return source, "skipped"
    try:
        with Image.open(source) as image:
            output = preprocess_image(image, size, max_aspect_ratio)
    except Exception as err:  # PIL raises many types for corrupt files
        return source, f"failed: {type(err).__name__}: {err}"
    image_format = Image.registered_extensions()[os.path.splitext(target)[1].lower()]
    save_options = {"quality": quality} if image_format == "JPEG" else {}
    atomic_write(target, lambda temp: output.save(temp, format=image_format, **save_options))
    return source, "written"


@dataclass
class PreprocessResult:
    """Counts of a :func:`preprocess_directory` run and the files that failed."""

    written: int = 0
    skipped: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)


def find_images(
    input_dir: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude_dir: Optional[str] = None
) -> List[str]:
    """Image files under ``input_dir`` (recursively, sorted), as paths relative to it."""
    exclude_dir = os.path.abspath(exclude_dir) if exclude_dir else None
    relative_paths = []
    for directory, subdirectories, filenames in os.walk(input_dir):
        subdirectories[:] = [d for d in subdirectories if os.path.abspath(os.path.join(directory, d)) != exclude_dir]
        for filename in filenames:
            # temp files (``.<name>.*.tmp``; ``.preprocess.*`` from older versions) are no images
            if filename.lower().endswith(tuple(extensions)) and not filename.startswith(".preprocess."):
                relative_paths.append(os.path.relpath(os.path.join(directory, filename), input_dir))
    return sorted(relative_paths)


def preprocess_directory(
    input_dir: str,
    output_dir: str,
    *,
    size: int = 224,
    max_aspect_ratio: float = 1.8,
    quality: int = 95,
    overwrite: bool = False,
    num_workers: int = 2,
    progress: bool = True,
) -> PreprocessResult:
    """Preprocesses every image under ``input_dir`` into ``output_dir`` with the same relative paths.

    Idempotent: outputs that exist, are newer than their input and have the output size are
    skipped. Work runs in a process pool.

    Args:
        input_dir (str): source images (searched recursively).
        output_dir (str): destination root.
        size (int): output side.
        max_aspect_ratio (float): pad to a square above this aspect ratio.
        quality (int): JPEG quality.
        overwrite (bool): redo outputs that are up to date.
        num_workers (int): processes; 1 runs in this process.
        progress (bool): show a tqdm bar.

    Returns:
        PreprocessResult: written / skipped counts and ``(path, reason)`` of failures.
    """
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"input directory '{input_dir}' does not exist")
    jobs = [
        (os.path.join(input_dir, relative_path), os.path.join(output_dir, relative_path))
        for relative_path in find_images(input_dir, exclude_dir=output_dir)
    ]
    work = partial(preprocess_file, size=size, max_aspect_ratio=max_aspect_ratio, quality=quality, overwrite=overwrite)
    result = PreprocessResult()
    bar = partial(tqdm, total=len(jobs), desc="images", disable=not progress)
    if num_workers <= 1:
        statuses = list(bar(map(work, jobs)))
    else:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            statuses = list(bar(pool.map(work, jobs, chunksize=8)))
    for source, status in statuses:
        if status == "written":
            result.written += 1
        elif status == "skipped":
            result.skipped += 1
        else:
            result.failed.append((source, status[len("failed: "):]))
    return result
