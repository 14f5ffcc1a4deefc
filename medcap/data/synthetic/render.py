# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""Drawing of the synthetic images: the drawing parameters of an image and its pixels.

Each image shows an organ-like blob on a CT-, MRI- or X-ray-like background with 0 to 3 round
lesions (bright or dark spots) strictly inside the organ. :func:`sample_image_params` draws the
parameters (saved in ``params.json``, the source of every answer) and :func:`render_image` turns
them into gray levels.

Geometry conventions: pixel (row i, column j) has center (x=j, y=i); x grows to the right,
y grows downward; the image middle is ``(image_size - 1) / 2`` on both axes. Intensities
are in [0, 1] before the final conversion to 8-bit gray levels.
"""

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

MODALITIES = ("CT", "MRI", "X-ray")

# Lesion radius ranges as fractions of the image size. The gaps between the ranges make the
# size category of every lesion unambiguous (the category is read from the radius alone).
LESION_RADIUS_RANGES = {
    "small": (0.045, 0.055),
    "medium": (0.065, 0.078),
    "large": (0.090, 0.105),
}
# The largest lesion is at least this much larger (radius ratio) than the second largest.
LARGEST_LESION_MARGIN = 1.2
# |lesion intensity - organ intensity| range; 0.35 is ~89 gray levels, above the organ's
# own contrast to its surroundings (0.1 to 0.3).
LESION_CONTRAST_RANGE = (0.35, 0.48)


# ----------------------------------------------------------------------------------------
# Drawing parameters
# ----------------------------------------------------------------------------------------


def _sample_organ(rng: np.random.Generator, image_size: int) -> Dict[str, Any]:
    """Samples an organ: a rotated ellipse whose border is perturbed by a few harmonics."""
    middle = (image_size - 1) / 2
    return {
        "center": [
            round(middle + rng.uniform(-0.04, 0.04) * image_size, 3),
            round(middle + rng.uniform(-0.04, 0.04) * image_size, 3),
        ],
        "radii": [
            round(rng.uniform(0.34, 0.40) * image_size, 3),
            round(rng.uniform(0.31, 0.36) * image_size, 3),
        ],
        "angle": round(rng.uniform(-0.5, 0.5), 3),
        # border(theta) = 1 + sum_k amplitude_k * cos(k * theta + phase_k), k = 3..6
        "border_harmonics": [
            [k, round(rng.uniform(0.01, 0.035), 4), round(rng.uniform(0, 2 * math.pi), 3)]
            for k in range(3, 7)
        ],
        "intensity": None,  # set by the modality
    }


def organ_mask(organ: Dict[str, Any], image_size: int) -> np.ndarray:
    """Boolean mask of the organ drawn from its parameters.

    Args:
        organ (Dict[str, Any]): organ parameters (center, radii, angle, border_harmonics).
        image_size (int): side of the square image in pixels.

    Returns:
        np.ndarray: [image_size, image_size] bool, True inside the organ.
    """
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64)  # [h, w] each
    cx, cy = organ["center"]
    rx, ry = organ["radii"]
    cos_a, sin_a = math.cos(organ["angle"]), math.sin(organ["angle"])
    u = ((xs - cx) * cos_a + (ys - cy) * sin_a) / rx
    v = (-(xs - cx) * sin_a + (ys - cy) * cos_a) / ry
    theta = np.arctan2(v, u)
    border = np.ones_like(theta)
    for k, amplitude, phase in organ["border_harmonics"]:
        border += amplitude * np.cos(k * theta + phase)
    return np.hypot(u, v) <= border


def _sample_radii(rng: np.random.Generator, count: int, image_size: int) -> List[float]:
    """Samples lesion radii, largest first, with a unique largest lesion."""
    while True:
        categories = rng.choice(list(LESION_RADIUS_RANGES), size=count)
        radii = sorted(
            (round(rng.uniform(*LESION_RADIUS_RANGES[c]) * image_size, 3) for c in categories),
            reverse=True,
        )
        if count < 2 or radii[0] >= LARGEST_LESION_MARGIN * radii[1]:
            return radii


def _place_lesions(
    rng: np.random.Generator, radii: Sequence[float], mask: np.ndarray
) -> Optional[List[List[float]]]:
    """Finds lesion centers: disks inside the organ, off the midlines, not touching.

    Returns:
        Optional[List[List[float]]]: one [x, y] per radius, or None if placement failed.
    """
    image_size = mask.shape[0]
    middle = (image_size - 1) / 2
    ys, xs = np.mgrid[0:image_size, 0:image_size]
    centers: List[List[float]] = []
    for radius in radii:
        # candidates: organ pixels whose disk of radius + 1.5 stays in the organ, and whose
        # disk stays out of a band around both midlines (so every lesion has one quadrant)
        for _ in range(200):
            x = round(rng.uniform(0, image_size - 1), 3)
            y = round(rng.uniform(0, image_size - 1), 3)
            if abs(x - middle) < radius + 1 or abs(y - middle) < radius + 1:
                continue
            near = (xs - x) ** 2 + (ys - y) ** 2 <= (radius + 1.5) ** 2
            if not mask[near].all():
                continue
            if any(math.dist((x, y), c) < radius + r + 3 for c, r in zip(centers, radii)):
                continue
            centers.append([x, y])
            break
        else:
            return None
    return centers


def sample_image_params(
    rng: np.random.Generator, image_size: int, modality: str, lesion_count: int
) -> Dict[str, Any]:
    """Samples the drawing parameters of one image.

    Args:
        rng (np.random.Generator): random source (consumed deterministically).
        image_size (int): side of the square image in pixels.
        modality (str): one of ``MODALITIES``.
        lesion_count (int): number of lesions, 0 to 3.

    Returns:
        Dict[str, Any]: ``{"modality", "organ", "lesions"}``; each lesion has ``center``
        [x, y], ``radius``, ``intensity`` (organ intensity +- contrast) and ``polarity``.

    Raises:
        ValueError: if ``modality`` or ``lesion_count`` is not supported.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not 0 <= lesion_count <= 3:
        raise ValueError(f"lesion_count must be in 0..3, got {lesion_count}")
    organ_intensity = {"CT": (0.50, 0.60), "MRI": (0.38, 0.48), "X-ray": (0.30, 0.36)}
    for _ in range(100):
        organ = _sample_organ(rng, image_size)
        organ["intensity"] = round(rng.uniform(*organ_intensity[modality]), 3)
        radii = _sample_radii(rng, lesion_count, image_size)
        centers = _place_lesions(rng, radii, organ_mask(organ, image_size))
        if centers is not None:
            break
    else:
        raise RuntimeError(f"could not place {lesion_count} lesions at image_size={image_size}")
    lesions = []
    for center, radius in zip(centers, radii):
        contrast = rng.uniform(*LESION_CONTRAST_RANGE)
        polarity = "bright" if rng.random() < 0.5 else "dark"
        if organ["intensity"] - contrast < 0.02:  # no room below: use a bright lesion
            polarity = "bright"
        elif organ["intensity"] + contrast > 0.98:  # no room above: use a dark lesion
            polarity = "dark"
        sign = 1.0 if polarity == "bright" else -1.0
        intensity = round(organ["intensity"] + sign * contrast, 3)
        lesions.append(
            {"center": center, "radius": radius, "intensity": intensity, "polarity": polarity}
        )
    return {"modality": modality, "organ": organ, "lesions": lesions}


# ----------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding. image: [h, w] float."""
    half = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        padded = np.pad(image, pad, mode="edge")
        n = image.shape[axis]
        image = sum(
            w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel)
        )
    return image


def _ellipse(xs, ys, cx, cy, rx, ry) -> np.ndarray:
    """Normalized elliptic radius (1 on the border) of every pixel. Returns [h, w]."""
    return np.hypot((xs - cx) / rx, (ys - cy) / ry)


def _draw_background(rng: np.random.Generator, modality: str, size: int) -> np.ndarray:
    """Draws the body around the organ. Returns [size, size] float in [0, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    middle = (size - 1) / 2
    if modality == "CT":
        # air, a round body of soft tissue with a darker fat rim and a bright vertebra
        body = _ellipse(xs, ys, middle, middle + 0.02 * size, 0.49 * size, 0.45 * size)
        image = np.where(body <= 1.0, 0.30, 0.02)
        image = np.where((body > 0.9) & (body <= 1.0), 0.20, image)
        spine = _ellipse(xs, ys, middle, middle + 0.40 * size, 0.06 * size, 0.04 * size)
        image = np.where(spine <= 1.0, 0.92, image)
    elif modality == "MRI":
        # rounder body, bright fat ring, dark background
        body = _ellipse(xs, ys, middle, middle, 0.48 * size, 0.49 * size)
        image = np.where(body <= 1.0, 0.22, 0.03)
        image = np.where((body > 0.93) & (body <= 1.0), 0.62, image)
    else:  # X-ray: projection with bright bone streaks, darker lung-like organ drawn later
        image = 0.45 + 0.12 * np.cos(np.pi * (xs - middle) / size)
        image = np.where(np.abs(xs - middle) > 0.47 * size, 0.06, image)
        for k in range(6):  # rib-like arcs
            y0 = (0.08 + 0.16 * k + rng.uniform(-0.02, 0.02)) * size
            arc = y0 + 0.25 * size * ((xs - middle) / size) ** 2 * 4
            image = np.where(np.abs(ys - arc) < 0.025 * size, image + 0.3, image)
    return image


def render_image(params: Dict[str, Any], image_size: int, seed: int) -> np.ndarray:
    """Draws one image from its parameters.

    Args:
        params (Dict[str, Any]): output of :func:`sample_image_params`.
        image_size (int): side of the square image in pixels.
        seed (int): seed of the texture (noise, bias field, bone streaks).

    Returns:
        np.ndarray: [image_size, image_size] uint8 gray levels.
    """
    rng = np.random.default_rng(seed)
    modality, organ = params["modality"], params["organ"]
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64)  # [h, w]
    image = _draw_background(rng, modality, image_size)
    image = np.where(organ_mask(organ, image_size), organ["intensity"], image)
    for lesion in params["lesions"]:
        # anti-aliased disk: weight 1 inside, 0 outside, linear over one pixel at the edge
        distance = np.hypot(xs - lesion["center"][0], ys - lesion["center"][1])
        weight = np.clip(lesion["radius"] + 0.5 - distance, 0.0, 1.0)
        image = (1 - weight) * image + weight * lesion["intensity"]
    if modality == "CT":  # sharp structures, grainy noise
        image = _gaussian_blur(image, 0.5) + rng.normal(0, 0.025, image.shape)
    elif modality == "MRI":  # smooth, low noise, multiplicative bias field
        gx, gy = rng.uniform(-1, 1, size=2)
        bias = 1 + 0.08 * (gx * (xs / image_size - 0.5) + gy * (ys / image_size - 0.5)) * 2
        noise = _gaussian_blur(rng.normal(0, 0.03, image.shape), 1.0)
        image = _gaussian_blur(image, 0.8) * bias + noise
    else:  # X-ray: soft projection blur, fine noise
        image = _gaussian_blur(image, 0.7) + rng.normal(0, 0.012, image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
