"""The HTTP service on Ray Serve (FastAPI ingress).

Endpoints:
  ``POST /v1/stylize``  the content image as the raw body (``?style_id=...``), or multipart/form-data
                        with a ``content`` file and a ``style`` file or ``style_id`` field;
                        ``content_ratio`` / ``output_ratio`` (in [0, 1], default 1) as query parameters
                        or form fields. Answers PNG, or JPEG when the Accept header prefers it.
  ``POST /v1/styles``   registers a style (raw body or a ``style`` form file) -> 201 ``{"style_id"}``.
                        The id is opaque (a hash of the image; never a path); the image is kept by a
                        registry deployment (bounded, least recently used out) and the style code is
                        cached on each replica, so any replica can serve any registered id.
  ``GET /v1/health``    200 ``{"status": "ok", ...}`` once the model is loaded.

Refusals carry ``{"error": reason}``: 413 body above ``max_body_bytes``; 400 not an image, a
decompression bomb or an image above ``max_pixels`` (checked before decoding), bad ratios;
404 unknown style id; 406 an Accept that allows neither PNG nor JPEG; 504 the request ran longer
than ``request_timeout_s``; 503 (from Serve) when every replica holds ``max_ongoing_requests``
and ``max_queued_requests`` more wait already. Concurrent requests are stylized together
(``@serve.batch``). Binds 127.0.0.1 unless told otherwise.
"""
# No `from __future__ import annotations`: FastAPI must see the real `Request` annotations.
import asyncio
import logging
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from ..manifest import load_manifest
from . import http_io
from .http_io import HTTPFailure

log = logging.getLogger(__name__)
app = FastAPI(title="QuantArt style transfer", version="1")

DEFAULTS = dict(backend="auto", precision="fp32", style_size=256, max_body_bytes=16 << 20,
                max_pixels=4096 * 4096, request_timeout_s=30.0, max_batch_size=8,
                batch_wait_timeout_s=0.01, max_styles=1024, threads=None)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class StyleRegistry:
    """The registered style images, shared by every replica (id -> encoded bytes, LRU-bounded)."""

    def __init__(self, max_styles: int = 1024):
        self.max_styles = max_styles
        self.styles: OrderedDict[str, bytes] = OrderedDict()

    def put(self, style_id: str, data: bytes) -> None:
        self.styles[style_id] = data
        self.styles.move_to_end(style_id)
        while len(self.styles) > self.max_styles:
            self.styles.popitem(last=False)

    def get(self, style_id: str) -> bytes | None:
        data = self.styles.get(style_id)
        if data is not None:
            self.styles.move_to_end(style_id)
        return data


def _error(exc: HTTPFailure) -> JSONResponse:
    return JSONResponse({"error": exc.reason}, status_code=exc.status)


@serve.deployment
@serve.ingress(app)
class StylizeService:
    """One replica: a Stylizer, a style-code cache, and batched stylization."""

    def __init__(self, registry, model_dir: str, **options):
        from .. import Stylizer

        settings = {**DEFAULTS, **options}
        self.registry = registry
        self.model_dir = model_dir
        self.manifest = load_manifest(model_dir, precision=settings["precision"], verify=False)
        self.stride = int(self.manifest["latent_stride"])
        threads = settings.get("threads")
        self.stylizer = Stylizer.load(model_dir, backend=settings["backend"], precision=settings["precision"],
                                      **({"intra_op_threads": int(threads)} if threads else {}))
        self.style_size = int(settings["style_size"])
        self.max_body_bytes = int(settings["max_body_bytes"])
        self.max_pixels = int(settings["max_pixels"])
        self.timeout_s = float(settings["request_timeout_s"])
        self.max_styles = int(settings["max_styles"])
        self.codes: OrderedDict[str, object] = OrderedDict()
        self.stats = {"batches": 0, "batched_requests": 0, "largest_batch": 0}
        self._stylize_batch.set_max_batch_size(int(settings["max_batch_size"]))
        self._stylize_batch.set_batch_wait_timeout_s(float(settings["batch_wait_timeout_s"]))

    # -- endpoints ---------------------------------------------------------------------------
    @app.get("/v1/health")
    async def health(self):
        return {"status": "ok", "kind": self.manifest.get("kind"), "latent_stride": self.stride,
                "backend": self.stylizer.backend, "cached_styles": len(self.codes), **self.stats}

    @app.post("/v1/styles")
    async def register_style(self, request: Request):
        return await self._guard(self._register(request))

    @app.post("/v1/stylize")
    async def stylize(self, request: Request):
        return await self._guard(self._stylize(request))

    # -- request handling --------------------------------------------------------------------
    async def _guard(self, work):
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except HTTPFailure as exc:
            return _error(exc)
        except asyncio.TimeoutError:
            return _error(HTTPFailure(504, f"request took longer than {self.timeout_s:g} s"))

    async def _fields(self, request: Request) -> dict[str, bytes]:
        """Form fields (multipart) or {"body": raw body}; query parameters fill what is missing."""
        body = await http_io.read_body(request, self.max_body_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            fields = http_io.parse_multipart(body, content_type)
        else:
            fields = {"body": body}
        for key, value in request.query_params.items():
            fields.setdefault(key, value.encode("utf-8"))
        return fields

    async def _register(self, request: Request):
        fields = await self._fields(request)
        data = fields.get("style", fields.get("body", b""))
        style_id = http_io.style_id_for(data, self.style_size)
        await self._encode_style(data, style_id)
        await self.registry.put.remote(style_id, data)
        return JSONResponse({"style_id": style_id}, status_code=201)

    async def _stylize(self, request: Request):
        fmt = http_io.negotiate(request.headers.get("accept"))
        fields = await self._fields(request)
        content_ratio = http_io.parse_ratio(fields.get("content_ratio"), "content_ratio")
        output_ratio = http_io.parse_ratio(fields.get("output_ratio"), "output_ratio")
        content = fields.get("content", fields.get("body"))
        if content is None:
            raise HTTPFailure(400, "no content image (send it as the body or as a 'content' form file)")
        if "style" in fields:
            code = await self._encode_style(fields["style"], None)
        elif "style_id" in fields:
            code = await self._style_code(fields["style_id"].decode("latin-1"))
        else:
            raise HTTPFailure(400, "no style: give style_id or a 'style' form file")
        image = await asyncio.to_thread(http_io.decode_image, content, "content", self.max_pixels, self.stride)
        result = await self._stylize_batch((image, code, content_ratio, output_ratio))
        if isinstance(result, Exception):
            if isinstance(result, ValueError):  # ImageError is a ValueError
                raise HTTPFailure(400, f"content: {result}")
            raise result
        data = await asyncio.to_thread(http_io.encode_image, result, fmt)
        return Response(data, media_type=http_io.MEDIA_TYPES[fmt])

    # -- styles ------------------------------------------------------------------------------
    def _cache(self, style_id: str, code) -> None:
        self.codes[style_id] = code
        self.codes.move_to_end(style_id)
        while len(self.codes) > self.max_styles:
            self.codes.popitem(last=False)

    async def _encode_style(self, data: bytes, style_id: str | None):
        def work():
            image = http_io.decode_image(data, "style", self.max_pixels, 1)
            return self.stylizer.encode_style(image, size=self.style_size)

        code = await asyncio.to_thread(work)
        if style_id is not None:
            self._cache(style_id, code)
        return code

    async def _style_code(self, style_id: str):
        http_io.check_style_id(style_id)
        code = self.codes.get(style_id)
        if code is not None:
            self.codes.move_to_end(style_id)
            return code
        data = await self.registry.get.remote(style_id)
        if data is None:
            raise HTTPFailure(404, "unknown style id")
        return await self._encode_style(data, style_id)

    # -- batched stylization -----------------------------------------------------------------
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _stylize_batch(self, jobs: list[tuple]) -> list:
        self.stats["batches"] += 1
        self.stats["batched_requests"] += len(jobs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        return await asyncio.to_thread(self._run_jobs, jobs)

    def _run_jobs(self, jobs: list[tuple]) -> list:
        """Stylize a batch of (image, style code, content_ratio, output_ratio): one runtime call per
        distinct (style, ratios); an exception is returned in place of that group's images."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, code, content_ratio, output_ratio) in enumerate(jobs):
            groups.setdefault((id(code), content_ratio, output_ratio), []).append(i)
        results: list = [None] * len(jobs)
        for (_, content_ratio, output_ratio), members in groups.items():
            try:
                outs = self.stylizer.stylize([jobs[i][0] for i in members], jobs[members[0]][1],
                                             content_ratio=content_ratio, output_ratio=output_ratio)
            except Exception as exc:  # noqa: BLE001 - handed to each request of the group
                log.exception("stylize failed for a group of %d", len(members))
                outs = [exc] * len(members)
            for i, out in zip(members, outs):
                results[i] = out
        return results


def build_app(model_dir, *, replicas: int = 1, cpus_per_replica: float = 1, gpus_per_replica: float = 0,
              max_ongoing_requests: int = 16, max_queued_requests: int = 64, **options):
    """The Serve application (registry + service), checked against the model directory first.
    ``options``: any of ``DEFAULTS``."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown service option(s): {', '.join(sorted(unknown))}")
    settings = {**DEFAULTS, **options}
    if max_ongoing_requests < 1 or replicas < 1:
        raise ValueError("replicas and max_ongoing_requests must be >= 1")
    model_dir = str(Path(model_dir).resolve())
    load_manifest(model_dir, precision=settings["precision"], verify=True)
    registry = StyleRegistry.bind(settings["max_styles"])
    actor_options = {"num_cpus": cpus_per_replica}
    if gpus_per_replica:
        actor_options["num_gpus"] = gpus_per_replica
    return StylizeService.options(
        num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests, ray_actor_options=actor_options,
    ).bind(registry, model_dir, **{**settings, "threads": settings["threads"] or
                                   (max(1, int(round(cpus_per_replica))) if cpus_per_replica else None)})


def start_service(model_dir, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  name: str = "quantart", route_prefix: str = "/", **app_options) -> str:
    """Start (or join) Ray and Serve on ``host:port`` and deploy the service; returns its base URL.
    The proxy's end-to-end timeout (answering 408) backs up the per-request one."""
    import ray

    app_ = build_app(model_dir, **app_options)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    backstop = float(app_options.get("request_timeout_s", DEFAULTS["request_timeout_s"])) + 30.0
    serve.start(http_options={"host": host, "port": int(port), "request_timeout_s": backstop})
    serve.run(app_, name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"
