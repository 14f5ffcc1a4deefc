# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""The preview of a synthetic data set: a labelled grid of its first images."""

import json
from pathlib import Path

from PIL import Image, ImageDraw

from medcap.data.synthetic.render import MODALITIES
from medcap.utils.atomic import atomic_write


def save_sample_grid(
    data_dir: str, output_path: str, rows: int = 4, cols: int = 4, tile_size: int = 128
) -> None:
    """Saves a grid of the first images, modalities in turn, labeled with modality and count.

    Args:
        data_dir (str): a directory written by :func:`make_synthetic_vqa`.
        output_path (str): PNG to write (atomically).
        rows (int): grid rows.
        cols (int): grid columns.
        tile_size (int): side of one tile in pixels (images are upscaled, nearest).

    Raises:
        FileNotFoundError: if ``data_dir`` has no params.json.
    """
    params_path = Path(data_dir) / "params.json"
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path} not found: run make_synthetic_vqa first")
    with open(params_path, encoding="utf-8-sig") as f:
        images = json.load(f)["images"]
    label_height = 14
    grid = Image.new("L", (cols * tile_size, rows * (tile_size + label_height)), 255)
    draw = ImageDraw.Draw(grid)
    by_modality = [[(k, v) for k, v in images.items() if v["modality"] == m] for m in MODALITIES]
    interleaved = [pair for group in zip(*by_modality) for pair in group]  # CT, MRI, X-ray, CT...
    for slot, (image_id, params) in enumerate(interleaved[: rows * cols]):
        row, col = divmod(slot, cols)
        with Image.open(Path(data_dir) / "images" / f"{image_id}.png") as image:
            tile = image.convert("L").resize((tile_size, tile_size), Image.NEAREST)
        top = row * (tile_size + label_height)
        grid.paste(tile, (col * tile_size, top + label_height))
        label = f"{params['modality']}, {len(params['lesions'])} lesion(s)"
        draw.text((col * tile_size + 3, top + 1), label, fill=0)
    atomic_write(output_path, lambda temp: grid.save(temp, format="PNG"))
