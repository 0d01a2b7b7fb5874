"""The Ray Serve service on 127.0.0.1 (ephemeral port, local 2-CPU Ray): correct images, every error
status, dynamic batching, and a bounded load test through benchmarks/serve_load.py."""
from __future__ import annotations

import asyncio
import io
import os

import httpx
import numpy as np
import pytest
from PIL import Image

from cluster_helpers import encode, free_port, png_bomb, smooth_image

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)

STYLE_SIZE = 64
MAX_BODY = 200_000


@pytest.fixture(scope="module")
def service(model_dir):
    """Three apps on one Serve: the main one, a tight one (1 in flight + 1 queued) and one whose
    request timeout is far too short for any stylization."""
    from ray import serve

    from quantart_runtime.cluster.batch import ray_init_options
    from quantart_runtime.cluster.serve import build_app, start_service

    ray.init(num_cpus=2, log_to_driver=False, **ray_init_options(None))
    common = dict(cpus_per_replica=0.5, style_size=STYLE_SIZE, backend="onnxruntime")
    try:
        base = start_service(model_dir, host="127.0.0.1", port=free_port(), max_body_bytes=MAX_BODY,
                             max_ongoing_requests=16, max_queued_requests=64, request_timeout_s=60,
                             **common)
        serve.run(build_app(model_dir, max_ongoing_requests=1, max_queued_requests=1, max_batch_size=1,
                            **common), name="tight", route_prefix="/tight")
        serve.run(build_app(model_dir, request_timeout_s=1e-4, **common), name="slow", route_prefix="/slow")
        serve.run(build_app(model_dir, memory_budget="128M", request_timeout_s=300, **common), name="small",
                  route_prefix="/small")
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(model_dir):
    from quantart_runtime import Stylizer

    # one ORT thread, as the replicas (cpus_per_replica < 1): ORT sums can depend on the thread count
    return Stylizer.load(model_dir, backend="onnxruntime", intra_op_threads=1)


STYLE = smooth_image(72, 80, seed=7)
CONTENT = smooth_image(40, 52, seed=3)


@pytest.fixture(scope="module")
def style_id(service):
    response = httpx.post(f"{service}/v1/styles", content=encode(STYLE), timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["style_id"]


def _multipart(fields: dict[str, bytes], boundary: str = "qa-boundary-1234") -> tuple[bytes, str]:
    body = b""
    for name, data in fields.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_health(service):
    response = httpx.get(f"{service}/v1/health", timeout=30)
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_stylize_returns_the_runtime_image_as_png_and_jpeg(service, style_id, reference):
    from quantart_runtime.cluster.http_io import encode_image

    code = reference.encode_style(STYLE, size=STYLE_SIZE)
    want = reference.stylize(CONTENT, code)
    response = httpx.post(f"{service}/v1/stylize", params={"style_id": style_id}, content=encode(CONTENT),
                          timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), want)

    response = httpx.post(f"{service}/v1/stylize", params={"style_id": style_id}, content=encode(CONTENT),
                          headers={"Accept": "image/jpeg"}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == encode_image(want, "jpeg")

    # multipart: content + style files, ratios as form fields
    want = reference.stylize(CONTENT, code, content_ratio=0.5, output_ratio=0.25)
    body, ctype = _multipart({"content": encode(CONTENT), "style": encode(STYLE),
                              "content_ratio": b"0.5", "output_ratio": b"0.25"})
    response = httpx.post(f"{service}/v1/stylize", content=body, headers={"Content-Type": ctype}, timeout=60)
    assert response.status_code == 200, response.text
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), want)


@pytest.mark.parametrize("case", ["too_large", "not_image", "bomb", "unknown_id", "path_id", "bad_ratio",
                                  "no_style", "tiny_image", "bad_accept"])
def test_error_statuses(service, style_id, case):
    url = f"{service}/v1/stylize"
    params = {"style_id": style_id}
    content, headers = encode(CONTENT), {}
    status, words = {
        "too_large": (413, "limit"), "not_image": (400, "not an image"), "bomb": (400, "decompression-bomb"),
        "unknown_id": (404, "unknown style id"), "path_id": (404, "unknown style id"),
        "bad_ratio": (400, "content_ratio"), "no_style": (400, "no style"),
        "tiny_image": (400, "latent cell"), "bad_accept": (406, "image/png"),
    }[case]
    if case == "too_large":
        content = b"\0" * (MAX_BODY + 1)
    elif case == "not_image":
        content = b"hello, this is text"
    elif case == "bomb":
        content = png_bomb()
    elif case == "unknown_id":
        params = {"style_id": "0" * 32}
    elif case == "path_id":
        params = {"style_id": "../../etc/passwd"}
    elif case == "bad_ratio":
        params["content_ratio"] = "1.5"
    elif case == "no_style":
        params = {}
    elif case == "tiny_image":
        content = encode(smooth_image(2, 2, seed=1))
    elif case == "bad_accept":
        headers = {"Accept": "text/html"}
    response = httpx.post(url, params=params, content=content, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_register_style_rejects_non_image(service):
    response = httpx.post(f"{service}/v1/styles", content=b"GIF89a-but-not-really", timeout=60)
    assert response.status_code == 400 and "style" in response.json()["error"]


def test_request_timeout_answers_504(service, style_id):
    response = httpx.post(f"{service}/slow/v1/stylize", params={"style_id": style_id},
                          content=encode(smooth_image(64, 64, seed=2)), timeout=60)
    assert response.status_code == 504 and "longer than" in response.json()["error"]


def test_overload_answers_503_quickly(service, style_id):
    """1 in flight + 1 queued: a burst of 24 concurrent requests must shed some with 503."""
    body = encode(smooth_image(128, 128, seed=4))

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            register = await client.post(f"{service}/tight/v1/styles", content=encode(STYLE))
            sid = register.json()["style_id"]
            return await asyncio.gather(*(client.post(f"{service}/tight/v1/stylize", params={"style_id": sid},
                                                      content=body) for _ in range(24)))

    statuses: list[int] = []
    for _ in range(3):  # a burst is all but certain to overflow; retry a little for slow machines
        statuses += [r.status_code for r in asyncio.run(burst())]
        if 503 in statuses:
            break
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and 200 in statuses


def test_bounded_load_has_no_server_errors_and_batches(service, style_id, tmp_path):
    import json

    from quantart_benchmarks.serve_load import run_load, sample_images, write_report

    report = run_load(service, sample_images(8, 32), style_id=style_id, requests=60, concurrency=6)
    path = write_report(report, tmp_path / "load.json")
    saved = json.loads(path.read_text())
    assert saved["server_errors"] == 0 and saved["transport_errors"] == 0
    assert saved["ok"] == 60 and saved["status_counts"] == {"200": 60}
    assert saved["throughput_rps"] > 0 and 0 < saved["latency_ms"]["p50"] <= saved["latency_ms"]["p99"]
    health = httpx.get(f"{service}/v1/health", timeout=30).json()
    assert health["largest_batch"] > 1  # concurrent requests were stylized together


# -- memory bounded by the model -----------------------------------------------------------------
HUGE = encode(np.full((1600, 1600, 3), 200, np.uint8))   # ~10 KB body, 2.5 Mpx, far above the tiny model's limit


@pytest.fixture(scope="module")
def small_style_id(service):
    """STYLE registered on the "small" app (128 MiB memory budget; its own style registry)."""
    response = httpx.post(f"{service}/small/v1/styles", content=encode(STYLE), timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["style_id"]


def test_huge_dimensions_in_a_tiny_file_are_refused_with_4xx_when_resizing_is_off(service, small_style_id):
    style_id = small_style_id
    assert len(HUGE) < MAX_BODY
    response = httpx.post(f"{service}/small/v1/stylize", params={"style_id": style_id, "resize": "false"},
                          content=HUGE, timeout=120)
    assert response.status_code == 413, response.text
    assert "1600x1600" in response.json()["error"] and "resizing was not allowed" in response.json()["error"]
    response = httpx.post(f"{service}/small/v1/stylize", params={"style_id": style_id, "resize": "maybe"},
                          content=HUGE, timeout=120)
    assert response.status_code == 400 and "resize" in response.json()["error"]


def test_huge_dimensions_are_downscaled_and_the_answer_says_so(service, small_style_id):
    style_id = small_style_id
    response = httpx.post(f"{service}/small/v1/stylize", params={"style_id": style_id}, content=HUGE, timeout=300)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    w, h = image.size
    assert w == h and 16 <= w < 400
    assert response.headers["X-Quantart-Resized"] == f"1600x1600->{w}x{h}"
    small = httpx.post(f"{service}/small/v1/stylize", params={"style_id": style_id}, content=encode(CONTENT),
                       timeout=120)
    assert small.status_code == 200 and "X-Quantart-Resized" not in small.headers


WIDE = smooth_image(24, 3000, seed=5)    # above the "small" app's untiled limit, streamable within it


def test_an_image_above_the_untiled_limit_streams_at_full_size(service, small_style_id, model_dir, reference):
    """Not downscaled, not refused: the service's Stylizer streams it within its 128 MiB budget, within one
    uint8 level of the untiled result (which fits only the reference's larger budget)."""
    from quantart_runtime import Stylizer

    with Stylizer.load(model_dir, backend="onnxruntime") as small:
        small.set_memory_budget("128M")
        code = small.encode_style(STYLE, size=STYLE_SIZE)
        assert not small.size_policy.fits(*WIDE.shape[:2], 1, int(np.prod(code.latent.shape[2:])))
    response = httpx.post(f"{service}/small/v1/stylize", params={"style_id": small_style_id}, content=encode(WIDE),
                          timeout=300)
    assert response.status_code == 200, response.text
    assert "X-Quantart-Resized" not in response.headers
    got = np.asarray(Image.open(io.BytesIO(response.content)))
    want = reference.stylize(WIDE, reference.encode_style(STYLE, size=STYLE_SIZE), streaming="never")
    assert got.shape == WIDE.shape
    assert np.mean(np.abs(got.astype(int) - want.astype(int)) <= 1) >= 0.999


@pytest.mark.parametrize("shape", [(1, 64), (64, 1)])
def test_a_thin_style_is_refused_with_400(service, shape):
    thin = encode(np.full((*shape, 3), 90, np.uint8))      # 72 bytes
    response = httpx.post(f"{service}/v1/styles", content=thin, timeout=60)
    assert response.status_code == 400, response.text
    assert "smaller than one latent cell" in response.json()["error"]


def test_a_very_wide_style_is_capped_not_a_500(service):
    response = httpx.post(f"{service}/small/v1/styles", content=encode(np.full((16, 5000, 3), 90, np.uint8)),
                          timeout=120)
    assert response.status_code == 201, response.text


def test_proxy_timeout_counts_from_arrival_including_queue_wait(service):
    from ray.serve.context import _get_global_client

    from quantart_runtime.cluster.serve import QUEUE_GRACE_S

    # the proxy's end-to-end timer starts when the request arrives, before any queueing
    assert _get_global_client().http_config.request_timeout_s == 60 + QUEUE_GRACE_S


def test_replicas_listen_on_loopback_only(service):
    psutil = pytest.importorskip("psutil")
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening
    assert [(c.laddr.ip, c.laddr.port) for c in listening
            if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")] == []
