"""What keeps the service up under hostile or heavy traffic: upload, pixel and queue limits.

Every check here runs before the expensive step it protects:
- the declared `Content-Length` is checked before any byte of the body is read, and the bytes
  actually received are counted while they stream in (chunked uploads declare no length), so an
  oversized upload costs at most the limit in memory;
- an image's width and height are read from its header (PIL opens files lazily) before it is
  decoded, so a small PNG that decodes to gigapixels (a decompression bomb) is refused cheaply;
- a `Gate` admits at most `workers + queue` requests at once (uploading, waiting or running) and
  refuses the rest with 503 + `Retry-After`, so memory stays bounded instead of growing a queue.
"""
from __future__ import annotations

import io
import math
import threading
import warnings
from typing import Awaitable, Callable, Optional

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.types import Message

from ..data.io import decode_image as decode_image_bytes
from ..errors import DataError

# Multipart framing (boundaries, part headers, a file name) around the uploaded file: allowed on
# top of the file size limit so that `--max-upload-mb 20` accepts a 20 MB image.
MULTIPART_ALLOWANCE = 64 * 1024
UPLOAD_FIELD = "image"


class ServeError(Exception):
    """A request the service refuses: an HTTP status and a one-line message for `{"error": ...}`."""

    def __init__(self, status: int, message: str, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Gate:
    """Admission control: counts requests in flight (reading, waiting or running) across threads.

    `leave` is called from a worker thread when a job finishes, hence the lock. The mean job time
    (an exponential moving average) gives a `Retry-After` hint that tracks the real load.
    """

    def __init__(self, workers: int, queue: int):
        self.workers = workers
        self.capacity = workers + queue
        self.active = 0
        self.mean_seconds = 0.5  # before the first job: a guess, only used for Retry-After
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.active >= self.capacity:
                return False
            self.active += 1
            return True

    def leave(self, seconds: Optional[float] = None) -> None:
        with self._lock:
            self.active -= 1
            if seconds is not None:
                self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead of a new request, drained by the workers."""
        return max(1, math.ceil(self.mean_seconds * self.capacity / self.workers))

    def full_error(self) -> ServeError:
        return ServeError(503, f"server busy: {self.active} requests in progress (capacity {self.capacity}); "
                               "retry later", {"Retry-After": str(self.retry_after())})


def _too_large(limit: int) -> ServeError:
    return ServeError(413, f"upload larger than the limit of {limit / 2**20:g} MB")


def check_content_length(request: Request, max_bytes: int) -> None:
    """Refuse a body whose declared size is over the limit, before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise ServeError(400, f"Content-Length: expected a number of bytes, got '{declared[:40]}'") from None
    if size > max_bytes + MULTIPART_ALLOWANCE:
        raise _too_large(max_bytes)


def _counting_receive(receive: Callable[[], Awaitable[Message]], limit: int) -> Callable[[], Awaitable[Message]]:
    """`receive` that raises 413 as soon as the body received so far passes `limit` bytes."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit - MULTIPART_ALLOWANCE)
        return message

    return counted


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """(file bytes, file name) of an upload: the multipart field `image`, or a raw image body.

    A raw body (`curl --data-binary @street.png -H 'Content-Type: image/png'`) is accepted too,
    for clients that do not speak multipart.
    """
    check_content_length(request, max_bytes)
    limited = Request(request.scope, _counting_receive(request.receive, max_bytes + MULTIPART_ALLOWANCE))
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        # Starlette spools file parts over 1 MB to a temporary file, so parsing holds little memory.
        form = await limited.form(max_files=1, max_fields=16)
        try:
            item = form.get(UPLOAD_FIELD)
            if item is None:
                raise ServeError(400, f"multipart field '{UPLOAD_FIELD}' is missing: send the image as "
                                      f"-F {UPLOAD_FIELD}=@file.png")
            if isinstance(item, str):
                raise ServeError(400, f"multipart field '{UPLOAD_FIELD}' must be a file, got a text value")
            data, name = await item.read(), item.filename or "image"
        finally:
            await form.close()
    else:
        data, name = b"".join([chunk async for chunk in limited.stream()]), "image"
    if not data:
        raise ServeError(400, "empty upload: the image has 0 bytes")
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data, name


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone; 415 if the bytes are not an image PIL knows."""
    try:
        with warnings.catch_warnings():
            # our own pixel limit decides; PIL's warning (> 89 MP) would only be noise in the log
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header, decodes nothing
                return image.size
    except Image.DecompressionBombError as error:
        raise ServeError(413, f"image too large to decode safely ({error})") from None
    except Exception:  # untrusted bytes: any parser failure means "not an image we can read"
        raise ServeError(415, "not an image: expected a PNG, JPEG, BMP, TIFF or WebP file") from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """HxWx3 uint8 RGB, refusing images over `max_pixels` before decoding them.

    Decoded by `urbanseg.data.io.decode_image`, as `read_image` decodes files, so the service sees
    exactly the pixels that `urbanseg predict` would see for the same file.
    """
    width, height = image_size(data)
    if width * height > max_pixels:
        raise ServeError(413, f"image of {width}x{height} = {width * height / 1e6:.1f} megapixels is over the "
                              f"limit of {max_pixels / 1e6:g} megapixels")
    try:
        return decode_image_bytes(data, "upload")
    except DataError:
        raise ServeError(415, "not a readable image: the file is damaged or in a format OpenCV cannot decode") from None
