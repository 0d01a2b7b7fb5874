"""TensorRT engine loader: ONNX graph -> serialized engine (built or from the on-disk cache) -> ICudaEngine.

The loader half of Polygraphy's loader/runner split: ``TensorRTRunner`` (tensorrt.py) only runs
what ``EngineLoader.load`` returns. Per graph of the chosen precision:

1. the cache key is made from what decides the plan (``cache_fields``): the graph's sha256 (from
   the manifest, verified once by ``load_manifest``), TensorRT / Triton / CUDA driver versions,
   GPU name and compute capability, the plugin's PTX ISA and source hash, the optimization profile,
   workspace size and builder flags (``EngineKeys``). A hit deserializes the plan and imports
   neither onnx nor Triton: AOT plugin engines carry their PTX and run without the Python plugin,
   and what the key needs from onnx and Triton is recorded in the cache when the plan is built;
   graphs without a nearest-codebook subgraph need no PTX (and no supported GPU architecture);
2. on a miss: read the ONNX file (its bytes hashed against the key), replace each nearest-codebook
   subgraph by the ``quantart::nearest_code`` plugin (graph_rewrite), register the plugin (build
   only), and build a strongly typed network (TF32 cleared, so FP32 engines keep ONNX Runtime's
   arithmetic and near-tie argmins do not flip) with one optimization profile and a shared timing
   cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..engine_cache import EngineCache
from ..errors import BackendError, ModelError
from ..manifest import verified_digests
from ..util.digest import sha256_bytes, sha256_file

MIN_TENSORRT = (10, 12)
PROFILE_KEYS = ("min_res", "opt_res", "max_res", "max_batch", "opt_batch", "max_key_res")
DEFAULT_WORKSPACE_GB = 4.0
BUILDER_FLAGS = ("STRONGLY_TYPED", "no-TF32", "user-managed-context-memory")


def source_hash() -> str:
    """sha256 of the sources whose output an engine embeds (kernel, rewrite, plugin): a change to
    any of them must invalidate cached plans."""
    here = Path(__file__).resolve().parent
    files = [here.parent / "kernels" / "nearest_code.py", here / "graph_rewrite.py", here / "trt_plugin.py"]
    return sha256_bytes(b"".join(f.read_bytes() for f in files))


def triton_version() -> str:
    """Installed Triton's version from package metadata (no import); "none" when absent."""
    from importlib import metadata

    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return "none"


def default_cache_dir() -> Path:
    """``$QUANTART_TRT_CACHE`` or ``~/.cache/quantart/tensorrt``."""
    return Path(os.environ.get("QUANTART_TRT_CACHE") or Path.home() / ".cache" / "quantart" / "tensorrt")


def profile_shapes(manifest: dict, entry: dict, overrides: dict | None = None) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max] shapes} of one graph's optimization profile.

    Sizes come from the manifest's ``profile`` (min/opt/max_res in pixels, max_batch, opt_batch),
    overridden by ``overrides`` (same keys, None ignored). The batch axis is axis 0; an input named
    ``image`` is in pixels, every other symbolic axis is a latent axis (pixels / latent_stride); the key
    axes ``kh`` / ``kw`` of the streaming attention graphs (all of an image's keys against a tile of queries)
    reach ``max_key_res`` pixels where it is larger than ``max_res``.
    """
    prof = {**(manifest.get("profile") or {}),
            **{k: v for k, v in (overrides or {}).items() if k in PROFILE_KEYS and v is not None}}
    stride = int(manifest.get("latent_stride", 16))
    res = [int(prof.get("min_res", stride)), int(prof.get("opt_res", 256)), int(prof.get("max_res", 1024))]
    batch = [1, int(prof.get("opt_batch", 1)), int(prof.get("max_batch", 32))]
    keys = res[:2] + [max(res[2], int(prof.get("max_key_res") or 0))]
    shapes = {}
    for inp in entry["inputs"]:
        scale = 1 if inp["name"] == "image" else stride
        triple = []
        for level in range(3):
            shape = []
            for axis, dim in enumerate(inp["shape"]):
                if isinstance(dim, int):
                    shape.append(dim)
                elif axis == 0:
                    shape.append(batch[level])
                else:
                    side = keys[level] if dim in ("kh", "kw") else res[level]
                    shape.append(max(1, side // scale))
            triple.append(shape)
        shapes[inp["name"]] = triple
    return shapes


def cache_fields(*, graph: str, graph_sha256: str, precision: str, tensorrt_version: str, gpu_name: str,
                 compute_capability: tuple[int, int], driver_version: int, ptx_version: int,
                 profile: dict, workspace_bytes: int, builder_flags: list[str],
                 triton_version: str | None = None, plugin_source: str | None = None) -> dict:
    """Every field that decides whether a serialized plan can be reused (the engine cache key).

    ``ptx_version`` and Triton's version decide the plugin's embedded PTX (a plan whose PTX is newer
    than the driver still deserializes, then fails at run time); ``driver_version`` decides
    ``ptx_version``; workspace and builder flags change tactic choices. A graph without the plugin
    has ``ptx_version`` 0 and empty ``triton_version`` / ``plugin_source`` (``EngineKeys``).
    ``triton_version`` / ``plugin_source`` default to the installed Triton's and ``source_hash()``.
    """
    return {"graph": graph, "graph_sha256": graph_sha256, "precision": precision,
            "tensorrt_version": tensorrt_version, "gpu_name": gpu_name,
            "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
            "cuda_driver_version": int(driver_version), "ptx_version": int(ptx_version),
            "triton_version": _version() if triton_version is None else triton_version,
            "plugin_source": source_hash() if plugin_source is None else plugin_source, "profile": profile,
            "workspace_bytes": int(workspace_bytes), "builder_flags": sorted(builder_flags)}


_version = triton_version


class EngineKeys:
    """The engine cache key of each graph, computed without importing TensorRT, onnx or Triton.

    A cache hit must load with TensorRT and cuda-python alone (AOT plugin engines carry their
    PTX), so what the key needs from onnx and Triton is recorded next to the plans when they are
    built, as two small JSON blobs of the cache:

    * ``rewrite-<graph sha>-<source hash>.json``: how many nearest-code subgraphs the rewrite
      replaces in the graph (0: the graph needs no plugin, hence no PTX and no Triton at all);
    * ``plugin-sm<arch>-<driver>-<source hash>.json``: the PTX ISA and Triton version the plugin
      was compiled with for this GPU architecture and driver.

    Where onnx / Triton are installed the values are computed (so a Triton upgrade rebuilds) and
    the records rewritten; where they are not, the records are read, and a graph with no record is a
    ``BackendError`` saying what to install. An architecture without the kernel
    (``nearest_code.SUPPORTED_ARCHS``) is a ``BackendError`` naming the supported GPUs, but only
    for graphs that need the plugin.
    """

    def __init__(self, model_dir, manifest: dict, precision: str, cache: EngineCache, *, tensorrt_version: str,
                 gpu_name: str, compute_capability: tuple[int, int], driver_version: int,
                 workspace_bytes: int, builder_flags: list[str], profile: dict | None = None):
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.precision = precision
        self.cache = cache
        self.tensorrt_version = tensorrt_version
        self.gpu_name = gpu_name
        self.cc = tuple(int(c) for c in compute_capability)
        self.driver_version = int(driver_version)
        self.workspace_bytes = int(workspace_bytes)
        self.builder_flags = list(builder_flags)
        self.profile_overrides = dict(profile or {})

    @property
    def arch(self) -> int:
        """SM number of the device, e.g. 90."""
        return self.cc[0] * 10 + self.cc[1]

    def entry(self, graph: str) -> dict:
        """The manifest entry of ``graph`` at this precision."""
        return self.manifest["graphs"][self.precision][graph]

    def graph_digest(self, entry: dict) -> str:
        """The graph file's sha256 as verified by ``load_manifest``, hashing the file only if the
        manifest was loaded without verification."""
        digest = verified_digests(self.manifest).get(entry["file"])
        return digest or sha256_file(self.model_dir / entry["file"])

    def _record(self, name: str) -> dict | None:
        data = self.cache.read_blob(name)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def plugin_count(self, graph: str, digest: str) -> int:
        """Nearest-code subgraphs the rewrite replaces in ``graph`` (onnx only without a record)."""
        name = f"rewrite-{digest[:24]}-{source_hash()[:16]}.json"
        rec = self._record(name)
        if rec is not None and isinstance(rec.get("nearest_code"), int):
            return rec["nearest_code"]
        try:
            import onnx
        except ImportError:
            raise BackendError(f"TensorRT: no cached engine for {graph} and onnx is not installed "
                               f"(building engines needs it: pip install 'quantart[gpu]')") from None
        from .graph_rewrite import find_nearest_code_subgraphs

        entry = self.entry(graph)
        data = (self.model_dir / entry["file"]).read_bytes()
        if sha256_bytes(data) != digest:
            raise ModelError(f"model {self.model_dir}: {entry['file']} changed since manifest.json was verified")
        count = sum(r.replaced for r in find_nearest_code_subgraphs(onnx.load_from_string(data)))
        self.cache.write_blob(name, json.dumps({"graph": graph, "nearest_code": count}).encode())
        return count

    def plugin_fields(self, graph: str) -> tuple[int, str]:
        """(PTX ISA, Triton version) of the plugin for this GPU and driver (see the class docstring)."""
        from ..kernels.nearest_code import SUPPORTED_ARCHS, ptx_version_for_driver, supported_gpus

        if self.arch not in SUPPORTED_ARCHS:
            raise BackendError(f"TensorRT: {graph} needs the nearest-code plugin, which has no kernel for "
                               f"{self.gpu_name} (sm_{self.arch}); supported GPUs: {supported_gpus()}. "
                               f"Use backend='onnxruntime' on this GPU")
        name = f"plugin-sm{self.arch}-{self.driver_version}-{source_hash()[:16]}.json"
        version = triton_version()
        try:
            ptx = ptx_version_for_driver(self.driver_version, self.arch)   # runs Triton's ptxas, no import
        except (FileNotFoundError, RuntimeError):
            ptx = None
        if ptx is not None and version != "none":
            rec = {"ptx_version": ptx, "triton_version": version}
            if self._record(name) != rec:
                self.cache.write_blob(name, json.dumps(rec).encode())
            return ptx, version
        rec = self._record(name)
        if rec is None:
            raise BackendError(f"TensorRT: no cached engine for {graph} on sm_{self.arch} with driver "
                               f"{self.driver_version}, and Triton is not installed (it compiles the "
                               f"nearest-code plugin: pip install 'quantart[gpu]')")
        return int(rec["ptx_version"]), str(rec["triton_version"])

    def fields(self, graph: str) -> dict:
        """The cache key fields of ``graph`` (see ``cache_fields``); plugin-free graphs have no PTX."""
        entry = self.entry(graph)
        digest = self.graph_digest(entry)
        if self.plugin_count(graph, digest):
            ptx, triton, source = *self.plugin_fields(graph), source_hash()
        else:
            ptx, triton, source = 0, "", ""
        return cache_fields(graph=graph, graph_sha256=digest, precision=self.precision,
                            tensorrt_version=self.tensorrt_version, gpu_name=self.gpu_name,
                            compute_capability=self.cc, driver_version=self.driver_version, ptx_version=ptx,
                            profile=profile_shapes(self.manifest, entry, self.profile_overrides),
                            workspace_bytes=self.workspace_bytes, builder_flags=self.builder_flags,
                            triton_version=triton, plugin_source=source)


def tensorrt_version_ok(version: str) -> bool:
    """True when TensorRT ``version`` ("10.13.0") is at least MIN_TENSORRT."""
    try:
        return tuple(int(p) for p in version.split(".")[:2]) >= MIN_TENSORRT
    except ValueError:
        return False


class EngineLoader:
    """Builds or loads the TensorRT engine of each graph of one model directory.

    Args:
        model_dir: the exported model directory.
        manifest: its validated manifest (``load_manifest``; carries the verified sha256 digests).
        precision: "fp32" or "fp16" (FP16 graphs carry explicit casts: strongly typed networks).
        gpu_name, compute_capability, driver_version: the device the engines are for.
        cache_dir: engine cache directory (default ``default_cache_dir()``).
        workspace_gb: builder workspace limit in GiB (default 4).
        profile: profile overrides (``PROFILE_KEYS``).
    """

    def __init__(self, model_dir, manifest: dict, precision: str, *, gpu_name: str,
                 compute_capability: tuple[int, int], driver_version: int, cache_dir=None,
                 workspace_gb: float | None = None, profile: dict | None = None, logger=None):
        import tensorrt as trt

        self.trt = trt
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.precision = precision
        self.gpu_name = gpu_name
        self.cc = tuple(compute_capability)
        self.driver_version = int(driver_version)
        self.workspace_bytes = int(float(DEFAULT_WORKSPACE_GB if workspace_gb is None else workspace_gb) * (1 << 30))
        if self.workspace_bytes <= 0:
            raise ValueError(f"workspace_gb must be positive, got {workspace_gb!r}")
        self.profile_overrides = dict(profile or {})
        self.logger = logger or trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.cache = EngineCache(cache_dir or default_cache_dir())
        self.cache_status: dict[str, str] = {}
        self.keys = EngineKeys(self.model_dir, manifest, precision, self.cache, tensorrt_version=trt.__version__,
                               gpu_name=gpu_name, compute_capability=self.cc, driver_version=self.driver_version,
                               workspace_bytes=self.workspace_bytes, builder_flags=list(BUILDER_FLAGS),
                               profile=self.profile_overrides)

    @property
    def arch(self) -> int:
        """SM number of the device, e.g. 90."""
        return self.keys.arch

    def builder_flags(self) -> list[str]:
        """The builder settings that change the plan, by name (part of the cache key)."""
        return list(BUILDER_FLAGS)

    def fields(self, graph: str) -> dict:
        """The cache key fields of ``graph`` (``EngineKeys.fields``: no onnx / Triton on a hit)."""
        return self.keys.fields(graph)

    def load(self, graph: str):
        """The deserialized ``ICudaEngine`` of ``graph`` (cache hit, or built and cached).

        ``self.cache_status[graph]`` becomes "hit", "built" or "rebuilt". Raises ``ModelError``
        (file changed since the manifest was verified) or ``BackendError`` (parse / build failed).
        """
        fields = self.fields(graph)
        entry = self.manifest["graphs"][self.precision][graph]

        def deserialize(plan: bytes):
            return self.runtime.deserialize_cuda_engine(plan)

        engine, status = self.cache.get_or_build(fields, lambda: self._build(graph, entry, fields), deserialize)
        self.cache_status[graph] = status
        return engine

    def _build(self, graph: str, entry: dict, fields: dict) -> bytes:
        try:
            import onnx
        except ImportError:
            raise BackendError(f"TensorRT: building the engine of {graph} needs onnx "
                               f"(pip install 'quantart[gpu]')") from None

        from .graph_rewrite import replace_nearest_code

        trt = self.trt
        data = (self.model_dir / entry["file"]).read_bytes()
        if sha256_bytes(data) != fields["graph_sha256"]:
            raise ModelError(f"model {self.model_dir}: {entry['file']} changed since manifest.json was verified")
        model, report = replace_nearest_code(onnx.load_from_string(data))
        if any(r.replaced for r in report):
            if not fields["ptx_version"]:
                raise BackendError(f"TensorRT: {graph} changed its nearest-code subgraphs since its key was made")
            try:
                import triton  # noqa: F401
            except ImportError:
                raise BackendError(f"TensorRT: building the engine of {graph} needs Triton (it compiles the "
                                   f"nearest-code plugin: pip install 'quantart[gpu]')") from None
            from .trt_plugin import register_nearest_code_plugin

            register_nearest_code_plugin(self.arch, fields["ptx_version"])
        builder = trt.Builder(self.logger)
        strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)   # 10.x; always on in 11.x
        network = builder.create_network(0 if strong is None else 1 << int(strong))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(model.SerializeToString()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT could not parse {entry['file']}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)      # on by default: FP32 must stay FP32
        feature = getattr(getattr(trt, "PreviewFeature", None), "RUNTIME_ACTIVATION_RESIZE_10_10", None)
        if feature is not None:
            config.set_preview_feature(feature, True)    # context memory sized per call's shapes
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in fields["profile"].items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        timing_name = f"timing-{sha256_bytes(f'{trt.__version__}|{self.gpu_name}|{self.cc}'.encode())[:16]}.cache"
        timing = config.create_timing_cache(self.cache.read_blob(timing_name) or b"")
        config.set_timing_cache(timing, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"TensorRT failed to build an engine for {entry['file']} (see the log above)")
        self.cache.write_blob(timing_name, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)
