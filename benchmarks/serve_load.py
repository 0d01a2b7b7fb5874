"""Bounded load test of the HTTP service (``quantart serve``): a fixed number of requests from several
concurrent clients, then a report with throughput and p50/p99 latency.

    python -m quantart_benchmarks.serve_load --model DIR --requests 300 --concurrency 8 --out load.json
    python -m quantart_benchmarks.serve_load --url http://127.0.0.1:8000 --requests 300

With ``--model`` it starts a local Ray and the service on 127.0.0.1 (a free port) itself and stops
them afterwards. 503 answers are the service shedding load on purpose (counted, not errors); any
other 5xx or a transport error is an error. Latency percentiles are over the 200 answers.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from quantart_runtime.util import write_json


def sample_images(count: int, size: int, seed: int = 0) -> list[bytes]:
    """``count`` smooth random RGB PNGs of ``size``x``size`` (different content each)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse, "RGB").resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def _load(base_url: str, contents: list[bytes], style_id: str, requests: int, concurrency: int,
                accept: str, timeout_s: float, params: dict) -> dict:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    transport_errors: list[str] = []
    next_index = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        async def worker():
            for i in next_index:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/stylize", content=contents[i % len(contents)],
                        params={"style_id": style_id, **params},
                        headers={"Accept": accept, "Content-Type": "application/octet-stream"})
                except httpx.HTTPError as exc:
                    transport_errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - started
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    latencies.append(elapsed)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ok = statuses.get(200, 0)
    lat_ms = np.asarray(latencies) * 1000.0
    return {
        "url": base_url, "requests": requests, "concurrency": concurrency, "accept": accept,
        "elapsed_s": round(wall, 3),
        "ok": ok,
        "throughput_rps": round(ok / wall, 2) if wall > 0 else 0.0,
        "latency_ms": {"p50": round(float(np.percentile(lat_ms, 50)), 1) if ok else None,
                       "p99": round(float(np.percentile(lat_ms, 99)), 1) if ok else None,
                       "mean": round(float(lat_ms.mean()), 1) if ok else None},
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "shed_503": statuses.get(503, 0),
        "server_errors": sum(v for k, v in statuses.items() if k >= 500 and k != 503),
        "transport_errors": len(transport_errors),
        "transport_error_samples": transport_errors[:5],
    }


def run_load(base_url: str, contents: list[bytes], *, style_id: str | None = None,
             style_bytes: bytes | None = None, requests: int = 300, concurrency: int = 8,
             accept: str = "image/png", timeout_s: float = 120.0, params: dict | None = None) -> dict:
    """Send ``requests`` stylize requests from ``concurrency`` clients; registers ``style_bytes``
    first when no ``style_id`` is given. Returns the report (see the module doc)."""
    if requests < 1 or concurrency < 1 or not contents:
        raise ValueError("requests and concurrency must be >= 1, with at least one content image")
    if style_id is None:
        if style_bytes is None:
            raise ValueError("give style_id or style_bytes")
        response = httpx.post(f"{base_url}/v1/styles", content=style_bytes, timeout=timeout_s)
        response.raise_for_status()
        style_id = response.json()["style_id"]
    return asyncio.run(_load(base_url, contents, style_id, requests, concurrency, accept, timeout_s,
                             params or {}))


def write_report(report: dict, path) -> Path:
    """Write ``report`` as JSON to ``path`` atomically (parents created); returns the path.

    Raises ``OSError`` when the file cannot be written."""
    return write_json(path, report)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, timeout_s: float = 120.0) -> None:
    """Wait until ``base_url``'s /v1/health answers 200 (TimeoutError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/v1/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} did not become healthy in {timeout_s:g} s")


def main(argv=None) -> int:
    """Command line entry: start the service (``--model``) or use ``--url``, run the load, print and
    write the report; returns the exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service")
    where.add_argument("--model", help="start a local service for this model directory")
    parser.add_argument("--style", help="style image (default: a generated one)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="side of the generated content images")
    parser.add_argument("--accept", default="image/png")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (with --model)")
    parser.add_argument("--out", default="serve_load.json")
    args = parser.parse_args(argv)
    contents = sample_images(16, args.size)
    style = Path(args.style).read_bytes() if args.style else sample_images(1, 256, seed=99)[0]
    base_url = args.url
    if args.model:
        import ray
        from ray import serve

        from quantart_runtime.cluster.serve import start_service

        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        cpus = ray.cluster_resources().get("CPU", 1) / args.replicas
        base_url = start_service(args.model, host="127.0.0.1", port=free_port(), replicas=args.replicas,
                                 cpus_per_replica=cpus, max_batch_size=args.max_batch_size,
                                 max_ongoing_requests=max(16, 2 * args.max_batch_size))
    try:
        wait_healthy(base_url)
        report = run_load(base_url, contents, style_bytes=style, requests=args.requests,
                          concurrency=args.concurrency, accept=args.accept)
        report["content_size"] = args.size
    finally:
        if args.model:
            serve.shutdown()
            ray.shutdown()
    write_report(report, args.out)
    print(json.dumps(report, indent=2))
    return 1 if report["server_errors"] or report["transport_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
