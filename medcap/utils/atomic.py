"""The one atomic writer (torch-free): a file or a folder appears whole under its final name or not at all.

Every writer in medcap (checkpoints, converters, preprocessing, synthetic data, GGUF import,
generation outputs) goes through :func:`atomic_write` for files and :func:`atomic_directory` for
folders: the content is written under a temporary name beside the target and renamed with
``os.replace`` only when complete, so a crash or a full disk never leaves a half-written file
where a good one was.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` then rename the temp file to ``path``.

    Args:
        path (PathLike): the final file; its folder is created when missing.
        write (Callable[[str], None]): writes the whole file to the path it is given.

    Returns:
        Path: ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0o600; give the usual permissions
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, data: Any, indent: Optional[int] = 2) -> Path:
    """Write JSON (UTF-8, not ASCII-escaped, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def atomic_write_jsonl(path: PathLike, rows: Iterable[Any]) -> Path:
    """Write one JSON object per line atomically."""
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_directory(path: PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name; on success it replaces ``path`` whole.

    Usage::

        with atomic_directory(output_dir) as staging:
            (staging / "model.safetensors").write_bytes(...)

    On an exception the staging folder is removed and ``path`` is left as it was.

    Args:
        path (PathLike): the final folder (an existing one is replaced only at the end).

    Yields:
        Path: the staging folder to fill.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield staging
        mask = _umask()
        os.chmod(staging, 0o777 & ~mask)
        for child in staging.rglob("*"):
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~mask)
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, retired)  # retired is empty: replaced by the old folder
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
