"""Atomic file IO and the cache directory. A crash mid-write never leaves a partial file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, os.PathLike]


def cache_dir() -> Path:
    """``$SANITYCHECK_CACHE``, else ``$XDG_CACHE_HOME/sanitycheck``, else ``~/.cache/sanitycheck``."""
    env = os.environ.get("SANITYCHECK_CACHE")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "sanitycheck"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; a result file is as readable as any other
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as fh:
        return json.load(fh)


# ---------------------------------------------------------------- checksummed cache files
#: header of a checksummed cache file: magic line, then the SHA-256 (hex) of the payload, then the payload
CACHE_MAGIC = b"SANITYCHECK-CACHE 1\n"


class CorruptCacheError(Exception):
    """A cache file is truncated, altered or unreadable (the caller recomputes it)."""


def save_checked(path: PathLike, obj: Any) -> Path:
    """``torch.save`` ``obj`` atomically, with the SHA-256 of its bytes in a header (see :func:`load_checked`)."""
    import hashlib

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    return atomic_write_bytes(path, CACHE_MAGIC + digest + b"\n" + payload)


def load_checked(path: PathLike, weights_only: bool = True) -> Any:
    """The object :func:`save_checked` wrote; :class:`CorruptCacheError` (saying what is wrong) when the file
    is truncated, lacks the header, or its payload does not match its SHA-256."""
    import hashlib

    import torch

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CorruptCacheError(f"cannot read it ({err.strerror or err})") from err
    if not data.startswith(CACHE_MAGIC):
        raise CorruptCacheError("no checksum header (an old, foreign or truncated file)")
    head_end = len(CACHE_MAGIC) + 64
    if len(data) < head_end + 1 or data[head_end:head_end + 1] != b"\n":
        raise CorruptCacheError(f"truncated header ({len(data)} bytes)")
    expected = data[len(CACHE_MAGIC):head_end].decode("ascii", "replace")
    payload = data[head_end + 1:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CorruptCacheError(f"checksum mismatch: header says sha256 {expected[:16]}…, content is {actual[:16]}… "
                                f"({len(payload)} bytes; truncated or altered)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - a payload that matches its checksum but does not load
        raise CorruptCacheError(f"unreadable payload ({type(err).__name__}: {err})") from err
