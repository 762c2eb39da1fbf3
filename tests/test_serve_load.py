"""The service under a real HTTP server (uvicorn on 127.0.0.1, a free port): 200 concurrent uploads
all get an answer (200, or 503 by design when the queue is full), and an endless upload is cut off
at the limit instead of being read into memory. Latency percentiles are printed, never asserted."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import numpy as np
import pytest

from urbanseg.inference import load
from urbanseg.serve import create_app, running

CONCURRENT = 200
TOTAL_TIMEOUT = 120.0  # seconds for the whole burst; a hang fails the test instead of blocking CI


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def image_bytes(cityscapes_root) -> bytes:
    return sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0].read_bytes()


async def burst(base_url: str, body: bytes) -> list[tuple[int, float, dict, float]]:
    """(status, seconds, headers, server's own milliseconds) of CONCURRENT uploads sent at once."""
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=TOTAL_TIMEOUT) as client:
        async def one() -> tuple[int, float, dict, float]:
            started = time.perf_counter()
            response = await client.post("/v1/segment", files={"image": ("street.png", body, "image/png")})
            seconds, answer = time.perf_counter() - started, response.json()
            if response.status_code == 200:
                assert answer["image"] == {"width": 128, "height": 64}
            else:
                assert "error" in answer
            return response.status_code, seconds, dict(response.headers), answer.get("timing_ms", {}).get("total", 0.0)

        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(CONCURRENT))), TOTAL_TIMEOUT)


# The server under load runs in its own process, as in production: in-process, the test's client and
# the server would share one GIL and the latencies would measure that contention, not the service.
# It gets a socket the test has already bound, so the port is known and cannot be taken meanwhile.
SERVER = """
import socket, sys
import torch, uvicorn
from urbanseg.inference import load
from urbanseg.serve import create_app
fd, checkpoint, queue, workers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(max(1, 2 // workers))  # as `serve` does: the workers share the 2 cores
app = create_app(load(checkpoint, device="cpu"), queue=queue, workers=workers)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[socket.socket(fileno=fd)])
"""


@contextmanager
def server_process(checkpoint, queue: int, workers: int, timeout: float = 120.0) -> Iterator[str]:
    """Base URL of `urbanseg.serve` in a child process on 127.0.0.1; the child is stopped afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    child = subprocess.Popen([sys.executable, "-c", SERVER, str(sock.fileno()), str(checkpoint), str(queue),
                              str(workers)], pass_fds=[sock.fileno()])
    sock.close()  # the child holds its own copy
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert child.poll() is None, f"the server process exited with {child.returncode}"
            assert time.monotonic() < deadline, f"the server did not answer within {timeout:g} s"
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base_url
    finally:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def test_200_concurrent_uploads_are_all_answered(tiny_checkpoint, image_bytes):
    queue, workers = 32, 2
    with server_process(tiny_checkpoint, queue, workers) as base_url:
        httpx.post(f"{base_url}/v1/segment", files={"image": ("warm.png", image_bytes, "image/png")}, timeout=60)
        started = time.perf_counter()
        results = asyncio.run(burst(base_url, image_bytes))
        wall = time.perf_counter() - started
        health = httpx.get(f"{base_url}/healthz", timeout=10)
    statuses = [status for status, *_ in results]
    ok, busy = statuses.count(200), statuses.count(503)
    assert len(results) == CONCURRENT and ok + busy == CONCURRENT, f"unexpected statuses {sorted(set(statuses))}"
    assert ok >= queue + workers  # at least everything that fits the queue was served
    assert all(int(h["retry-after"]) >= 1 for s, _, h, _ in results if s == 503)
    assert health.status_code == 200 and health.json()["in_flight"] == 0
    served = np.array([seconds for status, seconds, *_ in results if status == 200]) * 1e3
    refused = np.array([seconds for status, seconds, *_ in results if status == 503]) * 1e3
    in_server = np.array([server_ms for status, _, _, server_ms in results if status == 200])
    print(f"\n{CONCURRENT} concurrent uploads (64x128 PNG, workers={workers}, queue={queue}) in {wall:.2f} s: "
          f"{ok} x 200, {busy} x 503")
    print(f"latency of 200s: p50 {np.percentile(served, 50):.0f} ms, p95 {np.percentile(served, 95):.0f} ms "
          f"(of which in the server, from upload to answer: p50 {np.percentile(in_server, 50):.0f} ms, "
          f"p95 {np.percentile(in_server, 95):.0f} ms; the rest is the client's own event loop and TCP)")
    if busy:
        print(f"latency of 503s: p50 {np.percentile(refused, 50):.0f} ms, p95 {np.percentile(refused, 95):.0f} ms")


def test_an_endless_upload_is_cut_off_at_the_limit(predictor):
    sent = 0

    def endless(chunk: bytes = b"\0" * 65536):
        nonlocal sent
        while sent < 2**30:  # 1 GB if nobody stops it
            sent += len(chunk)
            yield chunk

    with running(create_app(predictor, max_upload_mb=1)) as base_url:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            # no Content-Length (chunked): only counting the bytes as they arrive can stop this one
            response = client.post("/v1/segment", content=endless(), headers={"Content-Type": "image/png"})
            assert response.status_code == 413 and "limit of 1 MB" in response.json()["error"]
            assert sent < 64 * 2**20, f"the client could push {sent / 2**20:.0f} MB before the refusal"
        # a declared 1 GB body is refused from the headers alone, before a single body byte is sent
        host, port = base_url.rsplit("/", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /v1/segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                         f"Content-Length: {2**30}\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200
