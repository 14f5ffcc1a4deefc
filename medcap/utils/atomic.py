"""The one atomic writer (torch-free): a file or a folder appears whole under its final name or not at all.

Every writer in medcap (checkpoints, converters, preprocessing, synthetic data, GGUF import,
generation outputs) goes through :func:`atomic_write` for files and :func:`atomic_directory` for
folders: the content is written under a temporary name beside the target and renamed with
``os.replace`` only when complete, so a crash or a full disk never leaves a half-written file
where a good one was.

A write that fails for lack of room or permission (a full disk, a quota, a read-only or
unwritable folder) raises :class:`WriteError`: one line naming the final path (never the hidden
temporary one), the reason, the bytes needed and free, and that the previous file is untouched.
The writers' own messages for these faults name no path and often no cause: ``torch.save`` says
``[enforce fail at inline_container.cc:672] . unexpected pos``, safetensors ``I/O error: No space
left on device (os error 28)``.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

# errno -> what a user should read (the storage faults a write can meet)
STORAGE_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file-size limit",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# torch.save's C++ writer loses the errno: these messages mean a failed write (typically a full disk)
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "iostream error", "file write failed")
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")  # Rust (safetensors): "No space left on device (os error 28)"


class WriteError(OSError):
    """A file or folder that could not be written for lack of room or permission.

    Attributes:
        path (Path): the final file or folder.
        errno (Optional[int]): the OS error number when known.
        bytes_needed (Optional[int]): the size of the content when known in advance.
        bytes_written (Optional[int]): bytes of the content written before the failure.
        bytes_free (Optional[int]): bytes free on the target's file system after the failure.
    """

    def __init__(
        self,
        path: PathLike,
        reason: str,
        *,
        error_number: Optional[int] = None,
        bytes_needed: Optional[int] = None,
        bytes_written: Optional[int] = None,
        bytes_free: Optional[int] = None,
        existed: bool = False,
        kind: str = "file",
        detail: str = "",
    ):
        super().__init__(error_number, reason)
        self.path, self.reason, self.detail = Path(path), reason, detail
        self.bytes_needed, self.bytes_written, self.bytes_free = bytes_needed, bytes_written, bytes_free
        self.existed, self.kind = existed, kind

    def __str__(self) -> str:
        code = f" ({errno.errorcode[self.errno]})" if self.errno in errno.errorcode else ""
        sizes = []
        room = self.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, None)
        if room and self.bytes_needed is not None:
            sizes.append(f"needs {self.bytes_needed:,} bytes")
        elif room and self.bytes_written:
            sizes.append(f"needs more than the {self.bytes_written:,} bytes written before the failure")
        if room and self.bytes_free is not None:
            sizes.append(f"{self.bytes_free:,} bytes free there")
        previous = (f"the previous {self.kind} is unchanged" if self.existed else f"no partial {self.kind} was left")
        sizes_text = f"; {', '.join(sizes)}" if sizes else ""
        detail = f" {self.detail}" if self.detail else ""
        return f"cannot write {self.path}: {self.reason}{code}{detail}{sizes_text}; {previous}"


def free_bytes(path: PathLike) -> Optional[int]:
    """Bytes available to this user on the file system holding ``path`` (its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def storage_errno(error: BaseException) -> Optional[int]:
    """The storage errno behind an exception (see :data:`STORAGE_ERRORS`), following its causes.

    Recognises ``OSError``\\s, Rust-style ``(os error N)`` texts (safetensors) and torch.save's
    errno-less write failures (reported as ENOSPC when the file system is nearly full, else -1).

    Returns:
        Optional[int]: the errno, -1 for an unknown write failure, None when not a storage fault.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRORS:
            return error.errno
        match = _OS_ERROR_IN_TEXT.search(str(error))
        if match and int(match.group(1)) in STORAGE_ERRORS:
            return int(match.group(1))
        if isinstance(error, RuntimeError) and any(text in str(error) for text in _TORCH_WRITE_FAILURES):
            return -1
        error = error.__cause__ or error.__context__
    return None


def _describe_failure(error: BaseException, path: Path, kind: str, existed: bool, bytes_needed: Optional[int],
                      bytes_written: Optional[int]) -> Optional[WriteError]:
    number = storage_errno(error)
    if number is None:
        return None
    free = free_bytes(path.parent)
    if number == -1:  # torch's writer: a full disk when little room is left (it reserves no space itself)
        nearly_full = free is not None and free < max(1 << 20, 2 * (bytes_written or 0))
        number = errno.ENOSPC if nearly_full else None
        reason = STORAGE_ERRORS[errno.ENOSPC] if nearly_full else f"the write failed ({str(error).strip()[:120]})"
    else:
        reason = STORAGE_ERRORS[number]
    return WriteError(path, reason, error_number=number, bytes_needed=bytes_needed, bytes_written=bytes_written,
                      bytes_free=free, existed=existed, kind=kind)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_parent(path: Path, kind: str, existed: bool) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        described = _describe_failure(error, path, kind, existed, None, None)
        if described is None:
            raise
        described.detail = f"while creating the folder {path.parent}"
        raise described from error


def atomic_write(path: PathLike, write: Callable[[str], None], expected_bytes: Optional[int] = None) -> Path:
    """Call ``write(temp_path)`` then rename the temp file to ``path``.

    Args:
        path (PathLike): the final file; its folder is created when missing.
        write (Callable[[str], None]): writes the whole file to the path it is given.
        expected_bytes (Optional[int]): the file's size when known (or an estimate, e.g. the bytes
            of a state dict's tensors): refused before writing when the disk has less room, and
            named in the error.

    Returns:
        Path: ``path``.

    Raises:
        WriteError: no room or no permission (naming ``path``, never the temporary file); the
            previous ``path`` is untouched and no temporary file remains.
    """
    path = Path(path)
    existed = path.exists()
    _make_parent(path, "file", existed)
    if expected_bytes is not None:
        free = free_bytes(path.parent)
        if free is not None and expected_bytes > free:
            raise WriteError(path, STORAGE_ERRORS[errno.ENOSPC], error_number=errno.ENOSPC, bytes_needed=expected_bytes,
                             bytes_free=free, existed=existed)
    temp = None
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(temp)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0o600; give the usual permissions
        os.replace(temp, path)
    except BaseException as error:
        written = None
        if temp is not None:
            with contextlib.suppress(OSError):
                written = os.path.getsize(temp)
            Path(temp).unlink(missing_ok=True)
        described = _describe_failure(error, path, "file", existed, expected_bytes, written) if isinstance(error, Exception) else None
        if described is None:
            raise
        raise described from error
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write bytes atomically (their size is checked against the free space first)."""
    return atomic_write(path, lambda temp: Path(temp).write_bytes(data), expected_bytes=len(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data: Any, indent: Optional[int] = 2) -> Path:
    """Write JSON (UTF-8, not ASCII-escaped, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def atomic_write_jsonl(path: PathLike, rows: Iterable[Any]) -> Path:
    """Write one JSON object per line atomically."""
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _folder_bytes(folder: Path) -> int:
    return sum(child.stat().st_size for child in folder.rglob("*") if child.is_file())


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

    Raises:
        WriteError: no room or no permission, naming ``path`` (and the file being written), not
            the staging folder.
    """
    path = Path(path)
    existed = path.exists()
    _make_parent(path, "folder", existed)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as error:
        described = _describe_failure(error, path, "folder", existed, None, None)
        if described is None:
            raise
        raise described from error
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
    except Exception as error:
        written = None
        with contextlib.suppress(OSError):
            written = _folder_bytes(staging) if staging.exists() else None
        inner = error.path if isinstance(error, WriteError) else None
        described = _describe_failure(error, path, "folder", existed, None, written)
        if described is None and isinstance(error, WriteError):
            described = WriteError(path, error.reason, error_number=error.errno, bytes_needed=error.bytes_needed,
                                   bytes_written=written, bytes_free=error.bytes_free, existed=existed, kind="folder")
        if described is not None and inner is not None and isinstance(error, WriteError) and described.bytes_needed is None:
            described.bytes_needed = error.bytes_needed
        if described is None:
            raise
        if inner is not None and staging in inner.parents:
            described.detail = f"while writing {inner.relative_to(staging)}"
        raise described from error
    finally:
        if staging.exists():
            shutil.rmtree(staging)
