"""Image features of any vision tower, cached on disk by tower and image content.

* :func:`file_sha256` - the content hash of an image file (the cache key of an image);
* :func:`tower_fingerprint` - a hash of a tower's weights, its feature mode and the image transform
  (the cache key of a tower: a retrained tower or another preprocessing is another cache file);
* :func:`extract_features` - ``[n, d]`` features with a progress bar; images already in the cache are
  not recomputed. Cache: ``CACHE_DIR/<fingerprint>.npz`` with ``sha256`` (``<U64``) and ``features``
  (float32) arrays, read with ``allow_pickle=False`` and written atomically.

Feature modes: ``pooled`` (the tower's pooled, projected vector; for a CNN trained in ``patch`` mode
this passes the pooled map through open_clip's projection head) and ``mean-patch`` (the mean over the
tower's patch tokens: what a per-token projector reads).
"""

import hashlib
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from medcap.data.images import load_image
from medcap.models.vision import VisionTower
from medcap.utils.atomic import atomic_write

FEATURE_MODES = ("pooled", "mean-patch")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def feature_tower(tower: VisionTower, mode: str) -> VisionTower:
    """``tower``'s visual module in the output mode a feature mode reads (shared weights), in eval mode."""
    if mode not in FEATURE_MODES:
        raise ValueError(f"feature mode must be one of {FEATURE_MODES}, got {mode!r}")
    output = "pooled" if mode == "pooled" else "patch"
    if tower.output == output:
        return tower.eval()
    return VisionTower(tower.visual, output=output, image_size=tower.image_size).eval()


def tower_fingerprint(tower: VisionTower, mode: str, transform_args: Dict) -> str:
    """SHA-256 over the tower's tensors (names, dtypes, shapes, bytes), the feature mode and the transform."""
    digest = hashlib.sha256(f"{mode}|{sorted(transform_args.items())}".encode())
    for name, tensor in sorted(tower.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _read_cache(path: Path) -> Dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as cache:
        return dict(zip(cache["sha256"].tolist(), cache["features"]))


def _write_cache(path: Path, cached: Dict[str, np.ndarray]) -> None:
    keys = sorted(cached)
    features = np.stack([cached[k] for k in keys]).astype(np.float32)  # [n, d]

    def write(temp: str) -> None:
        with open(temp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(f, sha256=np.array(keys, dtype="<U64"), features=features)

    atomic_write(path, write)


@torch.no_grad()
def extract_features(
    tower: VisionTower,
    mode: str,
    paths: Sequence[Path],
    hashes: Sequence[str],
    transform: Callable,
    cache_path: Optional[Path] = None,
    batch_size: int = 32,
    desc: str = "features",
) -> np.ndarray:
    """Features of each image, from the cache where present.

    Args:
        tower (VisionTower): the tower (any output mode; see :func:`feature_tower`).
        mode (str): ``pooled`` or ``mean-patch``.
        paths (Sequence[Path]): image files.
        hashes (Sequence[str]): their :func:`file_sha256`, in the same order.
        transform (Callable): PIL image -> ``[3, h, w]`` tensor (the tower's eval preprocessing).
        cache_path (Optional[Path]): the ``.npz`` cache of this tower (see :func:`tower_fingerprint`); None: no cache.
        batch_size (int): images per forward pass.
        desc (str): progress bar label.

    Returns:
        np.ndarray: ``[len(paths), d]`` float32 features.
    """
    encoder = feature_tower(tower, mode)
    cached = _read_cache(Path(cache_path)) if cache_path is not None else {}
    todo: List[int] = []
    seen = set(cached)
    for index, digest in enumerate(hashes):
        if digest not in seen:
            todo.append(index)
            seen.add(digest)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not batches):
        images = torch.stack([transform(load_image(paths[i])) for i in batch])  # [b, 3, h, w]
        tokens = encoder(images)  # [b, n, d]
        for i, vector in zip(batch, tokens.mean(dim=1).float().numpy()):  # [b, d]; pooled: n = 1
            cached[hashes[i]] = vector
    if batches and cache_path is not None:
        _write_cache(Path(cache_path), cached)
    return np.stack([cached[digest] for digest in hashes]).astype(np.float32)
