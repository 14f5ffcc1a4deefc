# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""A procedurally drawn, medical-looking VQA and captioning data set with exact labels.

Each image shows an organ-like blob on a CT-, MRI- or X-ray-like background with 0 to 3
round lesions (bright or dark spots) strictly inside the organ. Every answer is computed
from the drawing parameters, which are saved in ``params.json`` next to the records, so the
labels are correct by construction and can be re-checked independently.

One job a file:

* ``render.py``: the drawing parameters of an image and its pixels;
* ``questions.py``: the facts read from the parameters, the questions and the ShareGPT records;
* ``writer.py``: :func:`make_synthetic_vqa` (split sizes, files, manifest, summary);
* ``plot.py``: :func:`save_sample_grid`, the preview grid.

The baselines written to ``baselines.json`` live with the metrics
(:func:`medcap.metrics.baselines.compute_baselines`).

Layout written by :func:`make_synthetic_vqa`::

    DIR/images/synth_00000.png ...   grayscale ("L") PNGs, image_size x image_size
    DIR/train.json, val.json, test.json   ShareGPT records (no "meta": pass image_dir=DIR)
    DIR/params.json                  drawing parameters per image
    DIR/baselines.json               majority and question-only baselines (train -> test)
    DIR/manifest.json                generation arguments and summary (for idempotency)

numpy and PIL only: no torch.
"""

from medcap.data.synthetic.plot import save_sample_grid
from medcap.data.synthetic.questions import (
    BALANCED_KINDS,
    COUNT_WORDS,
    OPTIONAL_KINDS,
    QUESTIONS,
    build_records,
    caption,
    image_facts,
    quadrant,
    size_category,
)
from medcap.data.synthetic.render import (
    LARGEST_LESION_MARGIN,
    LESION_CONTRAST_RANGE,
    LESION_RADIUS_RANGES,
    MODALITIES,
    organ_mask,
    render_image,
    sample_image_params,
)
from medcap.data.synthetic.writer import (
    LESION_COUNT_PATTERN,
    SPLIT_NAMES,
    make_synthetic_vqa,
    split_sizes,
)

__all__ = [
    "BALANCED_KINDS",
    "COUNT_WORDS",
    "LARGEST_LESION_MARGIN",
    "LESION_CONTRAST_RANGE",
    "LESION_COUNT_PATTERN",
    "LESION_RADIUS_RANGES",
    "MODALITIES",
    "OPTIONAL_KINDS",
    "QUESTIONS",
    "SPLIT_NAMES",
    "build_records",
    "caption",
    "image_facts",
    "make_synthetic_vqa",
    "organ_mask",
    "quadrant",
    "render_image",
    "sample_image_params",
    "save_sample_grid",
    "size_category",
    "split_sizes",
]
