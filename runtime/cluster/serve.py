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
  ``GET /v1/styles``    the sample styles registered at start (``sample_styles``; uploads are not
                        listed): ``{"styles": [{"style_id", "name", "thumbnail" (data: URL)}]}``.
  ``GET /v1/health``    200 ``{"status": "ok", "backend", "precision", ...}`` once the model is loaded.
  ``GET /``             the browser page (``web/``), which uses only the endpoints above.

Sizes follow the one size policy of ``quantart_runtime.core`` (shared with the CLI and the batch
job): a content above the model's memory limit (``quantart_runtime.memory``, ``memory_budget``) is
downscaled and the answer says so in ``X-Quantart-Resized: WxH->wxh``; with ``resize=false`` (query or
form field) it is refused with 413 instead. A style's long side and memory are capped likewise.

Refusals carry ``{"error": reason}``: 413 body above ``max_body_bytes`` or content above the memory
limit with ``resize=false``; 400 not an image, smaller than one latent cell (content or style, on its
original size), a decompression bomb or an image above ``max_pixels`` (checked before decoding), bad
ratios;
404 unknown style id; 406 an Accept that allows neither PNG nor JPEG; 504 the request ran longer
than ``request_timeout_s``; 503 (from Serve) when every replica holds ``max_ongoing_requests``
and ``max_queued_requests`` more wait already. Concurrent requests are stylized together
(``@serve.batch``). Binds 127.0.0.1 unless told otherwise; a Ray started here binds its own ports
(GCS, raylet, replicas) to 127.0.0.1 too. The proxy's end-to-end timeout (``request_timeout_s`` +
``QUEUE_GRACE_S``, answering 408) counts from the request's arrival, so time waiting in the queue is
bounded as well.
"""
# No `from __future__ import annotations`: FastAPI must see the real `Request` annotations.
import asyncio
import logging
import time
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from ..core import StylizeCore
from ..errors import ImageError, ImageTooLarge
from ..manifest import load_manifest
from . import http_io, web
from .http_io import HTTPFailure

log = logging.getLogger(__name__)
QUEUE_GRACE_S = 1.0   # the proxy answers 408 this long after request_timeout_s, queue wait included
app = FastAPI(title="QuantArt style transfer", version="1")

DEFAULTS = dict(backend="auto", precision="fp32", style_size=256, max_body_bytes=16 << 20,
                max_pixels=4096 * 4096, request_timeout_s=30.0, max_batch_size=8,
                batch_wait_timeout_s=0.01, max_styles=1024, threads=None, memory_budget=None)


def loopback_replica_grpc() -> bool:
    """On a node whose Ray address is loopback, make this replica's inter-deployment gRPC server
    listen on 127.0.0.1 instead of every interface: Ray Serve binds it to ``[::]:0`` unconditionally.
    Called from a replica's ``__init__`` (the server starts right after it). Returns whether it did."""
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1", "localhost"):
        return False
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "quantart_loopback", False):
        return original is not None

    def on_loopback(server, address: str):
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    on_loopback.quantart_loopback = True
    replica.add_port_to_grpc_server = on_loopback
    return True


@serve.deployment(ray_actor_options={"num_cpus": 0})
class StyleRegistry:
    """The registered style images, shared by every replica (id -> encoded bytes, LRU-bounded);
    the sample styles (``web.samples.SampleStyle``) are pinned and listed."""

    def __init__(self, max_styles: int = 1024, samples=()):
        loopback_replica_grpc()
        self.max_styles = max_styles
        self.styles: OrderedDict[str, bytes] = OrderedDict()
        self.samples = {sample.style_id: sample for sample in samples}

    def listing(self) -> list[dict]:
        """The sample styles, for ``GET /v1/styles``."""
        return [sample.listing() for sample in self.samples.values()]

    def put(self, style_id: str, data: bytes) -> None:
        """Keep a style image under its id (the least recently used beyond ``max_styles`` go)."""
        self.styles[style_id] = data
        self.styles.move_to_end(style_id)
        while len(self.styles) > self.max_styles:
            self.styles.popitem(last=False)

    def get(self, style_id: str) -> bytes | None:
        """A style image by id (a sample style or an upload), ``None`` when unknown."""
        if style_id in self.samples:
            return self.samples[style_id].data
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
        loopback_replica_grpc()
        self.registry = registry
        self.model_dir = model_dir
        self.manifest = load_manifest(model_dir, precision=settings["precision"], verify=False)
        self.stride = int(self.manifest["latent_stride"])
        threads = settings.get("threads")
        self.stylizer = Stylizer.load(model_dir, backend=settings["backend"], precision=settings["precision"],
                                      **({"intra_op_threads": int(threads)} if threads else {}))
        self.style_size = int(settings["style_size"])
        # the one stylize core (quantart_runtime.core): size policy, per-item errors, batching
        self.core = StylizeCore(self.stylizer, None, style_size=self.style_size,
                                memory_budget=settings["memory_budget"])
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
        """``GET /v1/health``: 200 with the model, backend, precision and batching counters."""
        return {"status": "ok", "kind": self.manifest.get("kind"), "latent_stride": self.stride,
                "backend": self.stylizer.backend, "precision": self.stylizer.runner.precision,
                "cached_styles": len(self.codes), **self.stats}

    @app.get("/v1/styles")
    async def styles(self):
        """The sample styles: ``{"styles": [{"style_id", "name", "thumbnail"}]}`` (uploads are not listed)."""
        return {"styles": await self.registry.listing.remote()}

    @app.get("/", include_in_schema=False)
    async def page(self):
        """The browser page (``web/index.html``)."""
        return await self.page_file("index.html")

    @app.get("/web/{name}", include_in_schema=False)
    async def page_file(self, name: str):
        """One of the page's files by name (``web.PAGE_FILES``); 404 for any other name."""
        found = web.page_file(name)
        if found is None:
            return _error(HTTPFailure(404, "no such page file"))
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})

    @app.post("/v1/styles")
    async def register_style(self, request: Request):
        """``POST /v1/styles``: register a style image -> 201 ``{"style_id"}`` (400 unusable, 413 too big)."""
        return await self._guard(self._register(request))

    @app.post("/v1/stylize")
    async def stylize(self, request: Request):
        """``POST /v1/stylize``: the stylized image (PNG/JPEG); refusals as in the module docstring."""
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
        resize = http_io.parse_flag(fields.get("resize"), "resize", default=True)
        image = await asyncio.to_thread(http_io.decode_image, content, "content", self.max_pixels, self.stride)
        try:
            prepared = await asyncio.to_thread(self.core.prepare, image, code, resize)
        except ImageTooLarge as exc:
            raise HTTPFailure(413, f"content: {exc}") from None
        except ImageError as exc:
            raise HTTPFailure(400, f"content: {exc}") from None
        deadline = time.monotonic() + self.timeout_s   # a streamed image stops at its next tile past it
        result = await self._stylize_batch((prepared.image, code, content_ratio, output_ratio, deadline))
        if isinstance(result, BaseException):
            failure = http_io.failure_for(result, "content")
            if failure.status >= 500 and failure.status != 504:   # 504: stopped at its time limit
                log.error("stylize failed: %s", failure.reason)
            raise failure
        data = await asyncio.to_thread(http_io.encode_image, result, fmt)
        headers = {http_io.RESIZED_HEADER: prepared.header()} if prepared.resized else {}
        return Response(data, media_type=http_io.MEDIA_TYPES[fmt], headers=headers)

    # -- styles ------------------------------------------------------------------------------
    def _cache(self, style_id: str, code) -> None:
        self.codes[style_id] = code
        self.codes.move_to_end(style_id)
        while len(self.codes) > self.max_styles:
            self.codes.popitem(last=False)

    async def _encode_style(self, data: bytes, style_id: str | None):
        def work():
            image = http_io.decode_image(data, "style", self.max_pixels, self.stride)
            try:
                return self.core.encode_style(image)   # long side and memory capped
            except Exception as exc:  # noqa: BLE001 - one status per failure, never a bare 500
                raise http_io.failure_for(exc, "style") from None

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
        """Stylize a batch of (image, style code, content_ratio, output_ratio, deadline): one runtime call
        per distinct (style, ratios), streamed images stopped once every request of the call has timed
        out (its latest deadline); an exception is returned in place of that group's images."""
        groups: dict[tuple, list[int]] = {}
        for i, (_, code, content_ratio, output_ratio, _) in enumerate(jobs):
            groups.setdefault((id(code), content_ratio, output_ratio), []).append(i)
        results: list = [None] * len(jobs)
        for (_, content_ratio, output_ratio), members in groups.items():
            # the core's error policy: a failing image gets its own exception, the others their result
            outs = self.core.stylize_many([jobs[i][0] for i in members], jobs[members[0]][1],
                                          content_ratio=content_ratio, output_ratio=output_ratio,
                                          deadline=max(jobs[i][4] for i in members))
            for i, out in zip(members, outs):
                results[i] = out
        return results


def build_app(model_dir, *, replicas: int = 1, cpus_per_replica: float = 1, gpus_per_replica: float = 0,
              max_ongoing_requests: int = 16, max_queued_requests: int = 64, sample_styles=None, **options):
    """The Serve application (registry + service), checked against the model directory first.
    ``sample_styles``: a folder of style images registered at start and listed by ``GET /v1/styles``
    (``web.SAMPLE_STYLES``: the samples shipped in the package); ``options``: any of ``DEFAULTS``.
    Raises ``ModelError`` for a bad model, ``ValueError``/``ImageError`` for bad options or samples."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown service option(s): {', '.join(sorted(unknown))}")
    settings = {**DEFAULTS, **options}
    if max_ongoing_requests < 1 or replicas < 1:
        raise ValueError("replicas and max_ongoing_requests must be >= 1")
    if settings["memory_budget"] is not None:
        from ..memory import parse_budget

        parse_budget(settings["memory_budget"])  # ValueError here, not in each replica
    model_dir = str(Path(model_dir).resolve())
    load_manifest(model_dir, precision=settings["precision"], verify=True)
    samples = []
    if sample_styles is not None:
        from .web.samples import load_sample_styles

        samples = load_sample_styles(sample_styles, int(settings["style_size"]), int(settings["max_pixels"]))
    registry = StyleRegistry.bind(settings["max_styles"], samples)
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
    Ray, when started here, binds 127.0.0.1 (``batch.ray_init_options``). The proxy's end-to-end
    timeout (answering 408) covers the queue wait and backs up the per-request one."""
    import ray

    from .batch import ray_init_options

    app_ = build_app(model_dir, **app_options)
    if not ray.is_initialized():
        ray.init(log_to_driver=False, **ray_init_options(address))
    # the proxy's end-to-end timeout starts when the request arrives, so it covers queue wait too
    backstop = float(app_options.get("request_timeout_s", DEFAULTS["request_timeout_s"])) + QUEUE_GRACE_S
    serve.start(http_options={"host": host, "port": int(port), "request_timeout_s": backstop})
    serve.run(app_, name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"
