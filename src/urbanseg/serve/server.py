"""Running the app: `serve` for the `urbanseg serve` command, `running` for tests and notebooks.

    urbanseg serve runs/demo/checkpoints/best.pt --port 8000     # then open http://127.0.0.1:8000/

Binds 127.0.0.1 unless told otherwise: a model server on all interfaces without a token is
anyone's GPU, so `serve` warns when both are the case.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
import uvicorn
from fastapi import FastAPI

from ..inference import load
from .app import create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(model_path: Union[str, os.PathLike], host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = 20, max_megapixels: float = 12, queue: int = 8, workers: int = 1,
          token: Optional[str] = None, device: str = "auto", backend: str = "auto", log_level: str = "info") -> None:
    """Load a checkpoint (`.pt`) or exported model (`.onnx`) and serve it until interrupted."""
    predictor = load(model_path, device=device, backend=backend)
    app = create_app(predictor, max_upload_mb=max_upload_mb, max_megapixels=max_megapixels, queue=queue,
                     workers=workers, token=token, model_name=Path(model_path).name)
    if workers > 1 and getattr(predictor.backend, "name", "") == "pytorch":
        # each worker runs its own forward pass; sharing the cores between them avoids oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    if host not in LOOPBACK and not token:
        print(f"urbanseg: warning: serving on {host} without --token: anyone who can reach this port "
              "can use the model", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yields its base URL (`port=0`: a free port).

    The socket is bound here, before the thread starts, so the port is known and no other process
    can take it between choosing and binding.
    """
    # IPPROTO_TCP explicitly, as asyncio's own servers do: only then does it set TCP_NODELAY on accepted
    # connections (a missing TCP_NODELAY costs 40 ms per keep-alive request: Nagle + delayed ACK)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="urbanseg-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {host}:{bound_port}: did not start within {timeout:g} s")
            time.sleep(0.02)
        yield f"http://{host if ':' not in host else f'[{host}]'}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
