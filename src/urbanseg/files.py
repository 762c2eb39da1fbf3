"""Writing result files atomically: a temporary file beside the target, then a rename.

Every file urbanseg writes for a user (checkpoints, metrics, reports, PNGs, cache entries) goes
through `atomic_write`, so a crash, a kill or a full disk never leaves half a file under the real
name, and never replaces a good file with a broken one. A failed write removes its temporary
file (a full disk stays as full as it was) and raises `OutputError` naming the file and the cause.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .errors import OutputError


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], durable: bool = False) -> Path:
    """Call `write(handle)` on a temporary file, then rename it to `path`.

    `durable` also flushes the data to the disk before the rename (for checkpoints: after a power
    cut the file is either the old one or the complete new one). The temporary name carries the
    process id, so concurrent writers of one path (data-loader workers filling the cache) never
    share a temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: not written ({describe_os_error(error)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """`value` as indented strict JSON (callers pass NaN-free values, see `metrics.json_safe`)."""
    return write_text(path, json.dumps(value, indent=1, allow_nan=False))


def describe_os_error(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    if error.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return (error.strerror or str(error)).lower()


def read_torch_file(path: str | os.PathLike, mmap: bool = False) -> Any:
    """The one place urbanseg unpickles a file: `torch.load(weights_only=True)` reads tensors and
    plain values only, never code. `mmap` maps the tensors instead of reading them (cheap when
    only a few plain values are wanted). Any failure propagates; callers name the file and the key."""
    import torch  # here, not at the top: data/io and the light CLI commands use this module without PyTorch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
