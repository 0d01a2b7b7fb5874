"""The streaming executor: any image size, exactly, in bounded memory, on every backend.

It runs the manifest's ``streaming`` schedule (``quantart_export.segments``; docs/model_format.md): each
step over tiles of its output with the halo its receptive field needs (``tiling``), GroupNorm statistics
of whole tensors accumulated in float64 while the step that writes them streams (``NormStats``),
attention a tile of queries at a time against all keys (memory linear in the tokens). Intermediates
live in a ``TensorStore``: RAM while the plan's budget holds them, temporary files otherwise.

``plan`` simulates the whole run without computing anything: tile sizes per step, where each tensor
lives, the predicted peak memory and temporary disk, the tile count. A request whose plan cannot fit
the budget is refused (``ImageTooLarge``, one line) before any work. The segment graphs run through a
second Runner of the same backend (created on first use), so ONNX Runtime CPU/CUDA, OpenVINO and
TensorRT all stream through the same ``Runner.infer``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import memory
from .errors import ImageTooLarge, ModelError
from .norm_stats import NormStats
from .stream_plan import Plan, RunInfo, StepPlan, _arena_releases  # noqa: F401 (RunInfo: public here)
from .tensor_store import BufferPool, TensorStore, disk_free, temp_parent
from .tiling import even_tiles, input_extent, out_size, tiles, window
from .util.heap import bound_heap

TILE_FRACTION = 0.3        # of the budget, for one tile's working memory (the rest holds the store)
CONV_TENSORS = memory.CONV_TENSORS
ATTN_BYTES = memory.ATTN_BYTES_PER_SCORE
SMALL_TENSOR = 1 << 20     # tensors up to this size always stay in RAM
KEY_RES = 4096             # TensorRT: image side (px) whose keys the attention engines take (a 12 MP photo: 4032)
TIGHT_FRACTION = 0.5       # a plan whose peak is above this share of the budget runs memory-bound (execute)
BAND_ROWS = 16             # output rows a band keeps before tiles split columns too


def _pad_size(n: int, stride: int) -> int:
    return -(-n // stride) * stride


class StreamingExecutor:
    """Runs the streaming schedule of ``manifest`` through a Runner like ``runner`` (see the module doc).

    Args: runner: the Stylizer's activated Runner (its class, device and options are reused);
    manifest: the model's manifest (with a ``streaming`` section).
    Raises ``ModelError`` when the export has no streaming schedule.
    """

    def __init__(self, runner, manifest: dict):
        self.section = manifest.get("streaming")
        if not isinstance(self.section, dict) or "chains" not in self.section:
            raise ModelError(f"model {runner.model_dir}: this export has no streaming schedule; re-export it "
                             f"with this quantart-export to stylize images above the memory budget")
        self.main, self.manifest = runner, manifest
        self.tensors = self.section["tensors"]
        self.eps = float(self.section["norm_eps"])
        self._runner = None
        self.calls = 0
        self.ram_store_cap: int | None = None   # bytes of intermediates kept in RAM at most (None: the budget's)
        self.pool = BufferPool()   # RAM tensor buffers kept between runs, at most the last plan's store RAM

    # -- the segment runner -------------------------------------------------------------------
    def runner(self):
        """The Runner of the segment graphs (created and activated on first use, files sha256-checked)."""
        if self._runner is None:
            from .util.digest import sha256_file

            entries = self.section["graphs"]["fp32"]
            root = Path(self.main.model_dir)
            for entry in entries.values():
                if ".." in Path(entry["file"]).parts or sha256_file(root / entry["file"]) != entry["sha256"]:
                    raise ModelError(f"model {root}: streaming graph {entry['file']} is missing or does not "
                                     f"match its sha256 (re-export the model)")
            view = {**self.manifest, "graphs": {"fp32": entries}, "_graph_names": tuple(entries)}
            options = {k: v for k, v in self.main.options.items() if k != "plan"}
            if self.main.name == "tensorrt":
                # one image at a time; tiles within max_res, the attention keys of a whole image
                options.update(self.segment_profile(), opt_batch=1)
            if self.main.name == "onnxruntime":
                # ~100 segment sessions share the process's one CPU arena, which keeps the largest tile's
                # working set (what the plan budgets): measured 1.5× faster than no arena (fresh pages for
                # every tile). Where this onnxruntime has no shared arena, none: an arena per session would
                # keep every segment's peak at once.
                import onnxruntime as ort

                from .backends.onnxruntime import shared_cpu_arena
                options["memory_arena"] = options.get("memory_arena", True) is not False and shared_cpu_arena(ort)
            runner = type(self.main)(root, view, precision="fp32", device=self.main.device, **options)
            runner.activate()
            self._runner = runner
        return self._runner

    def release_buffers(self) -> None:
        """Hand the buffers kept between runs back (the Stylizer calls this before an untiled run, whose
        memory budget does not count them)."""
        self.pool.trim(0)

    def close(self) -> None:
        """Free the segment runner (its sessions or engines) and the kept buffers; the executor can be
        used again."""
        self.release_buffers()
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    # -- planning -----------------------------------------------------------------------------
    def _shape(self, name: str, domains: dict) -> tuple:
        t = self.tensors[name]
        h, w = domains[t["domain"]]
        c = t["channels"]
        hs, ws = h // t["stride"], w // t["stride"]
        return (1, c, hs, ws)

    def _work(self, step: dict, th: int, tw: int, domains: dict) -> int:
        """Predicted working memory (bytes) of one (th × tw) output tile of ``step``."""
        x = self.tensors[step["inputs"]["x"]]
        out = [self.tensors[t] for t in step["outputs"].values()]
        rs, pre, post = step["resample"], step["pre_halo"], step["post_halo"]
        win = input_extent(th, rs, pre, post) * input_extent(tw, rs, pre, post)
        full_out = out_size(input_extent(th, rs, pre, post), rs) * out_size(input_extent(tw, rs, pre, post), rs)
        cin, cout = x["channels"], sum(t["channels"] for t in out)
        tiled = sum(self.tensors[t]["channels"] for t in step["inputs"].values())
        work = 4 * (2 * tiled * win + CONV_TENSORS * max(cin, cout) * max(win, full_out) + 2 * cout * full_out)
        if step["whole"]:
            k = self._shape(step["whole"]["k"], domains)
            keys = k[2] * k[3]
            work += ATTN_BYTES * win * keys + 3 * 4 * k[1] * keys + 3 * 4 * cin * win
        return int(work)

    def _grid(self, step: dict, out_shape: tuple, domains: dict, tile_budget: int, tile):
        h, w = out_shape[-2], out_shape[-1]
        if tile is not None:
            th, tw = (tile, tile) if isinstance(tile, int) else tile
            th, tw = min(h, th), min(w, tw)
        else:
            th, tw = h, w
            cap = self.window_cap()
            while cap and max(input_extent(th, step["resample"], step["pre_halo"], step["post_halo"]),
                              out_size(input_extent(th, step["resample"], step["pre_halo"], step["post_halo"]),
                                       step["resample"])) > cap and th > 1:
                th -= 1
            while cap and max(input_extent(tw, step["resample"], step["pre_halo"], step["post_halo"]),
                              out_size(input_extent(tw, step["resample"], step["pre_halo"], step["post_halo"]),
                                       step["resample"])) > cap and tw > 1:
                tw -= 1
            # rows first: full-width bands are contiguous, have no column halo and give the graphs' own
            # row statistics (measured at 1536x1024: column tiles cost +71 % over untiled, bands +13 %);
            # columns only once the bands are BAND_ROWS thin
            fits = lambda: self._work(step, th, tw, domains) <= tile_budget  # noqa: E731
            while not fits() and th > BAND_ROWS:
                th = max(BAND_ROWS, min(th - 1, int(th * 0.9)))
            while not fits() and tw > 1:
                tw = max(1, min(tw - 1, int(tw * 0.9)))
            while not fits() and th > 1:
                th = max(1, min(th - 1, int(th * 0.9)))
            return even_tiles(h, w, th, tw), self._work(step, th, tw, domains)
        return tiles(h, w, th, tw), self._work(step, th, tw, domains)

    def segment_profile(self) -> dict:
        """TensorRT: the segment engines' profile (``trt_engine.profile_shapes`` keys): the model's
        ``max_res`` (or the runner's override) for tile windows, batch 1, and ``max_key_res`` (runner option,
        else ``KEY_RES``, at least ``max_res``) for the keys of whole-image attention."""
        prof = {**(self.manifest.get("profile") or {}),
                **{k: v for k, v in self.main.options.items() if v is not None}}
        max_res = int(prof.get("max_res", 1024))
        keys = max(max_res, int(prof.get("max_key_res") or KEY_RES))
        return {"max_res": max_res, "max_batch": 1, "max_key_res": keys}

    def window_cap(self) -> int | None:
        """TensorRT: the largest tile side its engines' profile holds (every segment axis is profiled as a
        latent axis: ``max_res // latent_stride``); other backends take any shape (None)."""
        if self.main.name != "tensorrt":
            return None
        return max(1, self.segment_profile()["max_res"] // int(self.section["latent_stride"]))

    def key_cap(self) -> int | None:
        """TensorRT: the largest side (latent cells) of the keys its attention engines take; else None."""
        if self.main.name != "tensorrt":
            return None
        return max(1, self.segment_profile()["max_key_res"] // int(self.section["latent_stride"]))

    def plan(self, chains: list[str], domains: dict, budget: int, keep: tuple = (), tile=None,
             sources: tuple = ()) -> Plan:
        """Plan running ``chains`` on image domains ``domains`` ({"content": (Hp, Wp), "style": (Hs, Ws)})
        within ``budget`` bytes: tile grids, RAM/disk placement, predicted peak and disk. ``keep``: tensors
        not freed; ``sources``: tensors given at the start. Raises ``ImageTooLarge`` when it cannot fit."""
        steps = [s for c in chains for s in self.section["chains"][c]["steps"]]
        tile_budget = max(int(budget * TILE_FRACTION), 1 << 20)
        planned = []
        for s in steps:
            shape = self._shape(next(iter(s["outputs"].values())), domains)
            grid, work = self._grid(s, shape, domains, tile_budget, tile)
            planned.append(StepPlan(s, shape, grid, work))
        last_use = {}
        for i, s in enumerate(steps):
            for t in list(s["inputs"].values()) + list(s["whole"].values()):
                last_use[t] = i
        max_work = max(p.work_bytes for p in planned)
        io = 10 * domains["content"][0] * domains["content"][1]   # uint8 in/out, float preprocessing copy
        ram_cap = budget - max_work - io
        if self.ram_store_cap is not None:
            ram_cap = min(ram_cap, self.ram_store_cap)
        nbytes = lambda t: int(np.prod(self._shape(t, domains))) * (8 if self.tensors[t]["dtype"] == "int64" else 4)  # noqa: E731
        on_disk, live, ram, disk, peak, peak_disk, peak_ram = {}, set(), 0, 0, 0, 0, 0

        def alloc(t):
            nonlocal ram, disk, peak_disk, peak_ram
            on_disk[t] = ram + nbytes(t) > ram_cap and nbytes(t) > SMALL_TENSOR
            if on_disk[t]:
                disk += nbytes(t)
                peak_disk = max(peak_disk, disk)
            else:
                ram += nbytes(t)
                peak_ram = max(peak_ram, ram)
            live.add(t)

        for t in sources:
            alloc(t)
        for i, p in enumerate(planned):
            for t in p.step["outputs"].values():
                alloc(t)
            peak = max(peak, ram + p.work_bytes + io)
            for t in [t for t in live if last_use.get(t, -1) <= i and t not in keep]:
                live.discard(t)
                if on_disk[t]:
                    disk -= nbytes(t)
                else:
                    ram -= nbytes(t)
        cap = self.key_cap()
        keys = [self._shape(p.step["whole"]["k"], domains) for p in planned if p.step["whole"]]
        if cap and any(max(k[2:]) > cap for k in keys):
            raise ImageTooLarge(f"{domains['content'][1]}x{domains['content'][0]}: attention keys exceed the "
                                f"TensorRT profile ({cap} latent cells a side); use backend onnxruntime or "
                                f"raise the runner option max_key_res (now {self.segment_profile()['max_key_res']} px)")
        if peak > budget or ram_cap < 0:
            raise ImageTooLarge(f"{domains['content'][1]}x{domains['content'][0]}: even streamed this needs "
                                f"{peak / 2**30:.2f} GiB, above the memory budget of {budget / 2**30:.2f} GiB")
        free = disk_free(temp_parent())
        if peak_disk > free:
            raise ImageTooLarge(f"{domains['content'][1]}x{domains['content'][0]}: streaming needs "
                                f"{peak_disk / 2**30:.2f} GiB of temporary disk in {temp_parent()}, "
                                f"{free / 2**30:.2f} GiB free (set QUANTART_TEMP_DIR or raise the memory budget)")
        for p in planned:
            p.store_room = max(0, int(peak) - p.work_bytes - io)
        windows = max(self._window_bytes(p) for p in planned)
        return Plan(planned, on_disk, last_use, int(peak), int(peak_disk), sum(len(p.grid) for p in planned),
                    int(peak_ram), int(budget), int(windows))

    def _window_bytes(self, p: StepPlan) -> int:
        """Bytes of one tile's input windows of planned step ``p`` (part of its ``work_bytes``)."""
        s = p.step
        th = max(r1 - r0 for r0, r1, _, _ in p.grid)
        tw = max(c1 - c0 for _, _, c0, c1 in p.grid)
        win = (input_extent(th, s["resample"], s["pre_halo"], s["post_halo"])
               * input_extent(tw, s["resample"], s["pre_halo"], s["post_halo"]))
        return 4 * win * sum(self.tensors[t]["channels"] for t in s["inputs"].values())

    # -- running -------------------------------------------------------------------------------
    def execute(self, plan: Plan, sources: dict, domains: dict, ratios: dict, keep: tuple, info: RunInfo,
                progress=None, norm: str = "global") -> dict:
        """Run a plan: ``sources`` {tensor: array}; returns {kept tensor: array}. ``norm="tile"`` (tests
        only) normalises each tile with its own statistics, the naive tiling that is NOT exact."""
        runner = self.runner()
        # memory-bound (a tensor on disk, or the peak near the budget): nothing may hold memory outside the
        # plan, so no buffers are kept after the run, freed store buffers are reused only within each step's
        # share of the predicted peak (``store_room``), graph outputs are copied into the store (an adopted
        # output holds an arena chunk) and ONNX Runtime's arena hands its free memory back between tiles of
        # different sizes and after each step (``_arena_releases``)
        tight = plan.disk_bytes > 0 or plan.peak_bytes > TIGHT_FRACTION * plan.budget
        if tight:
            bound_heap()   # freed tile temporaries leave the process (util.heap: 1632 vs 743 MiB measured)
        self.pool.trim(0 if tight else plan.ram_bytes + 2 * plan.window_bytes)   # store + scratch buffers
        # a memory-bound run reuses buffers through a pool of its own (a concurrent run's trims cannot
        # widen it), emptied when the run ends
        pool = BufferPool(0) if tight else self.pool
        store = TensorStore(plan.disk_bytes, pool=pool, adopt=not tight)
        has_arena = hasattr(runner, "release_arena")   # ONNX Runtime: hand the arena back between tiles
        stats: dict[str, NormStats] = {}
        done, total = 0, plan.tiles
        try:
            for name, array in sources.items():
                store.put(name, array, plan.on_disk.get(name, False))
                self._stats(name, array, stats)
            for i, p in enumerate(plan.steps):
                s = p.step
                if tight:
                    pool.trim(p.store_room, store.ram_bytes)
                for t in s["outputs"].values():
                    dtype = np.int64 if self.tensors[t]["dtype"] == "int64" else np.float32
                    store.create(t, self._shape(t, domains), dtype, plan.on_disk[t])
                feeds_const = {}
                if s["norm"] and norm == "global":
                    feeds_const["mean"], feeds_const["rstd"] = stats[s["norm"]].mean_rstd(self.eps)
                if s["whole"]:
                    feeds_const["k"] = store.whole(s["whole"]["k"])
                    feeds_const["v"] = store.whole(s["whole"]["v"])
                if s["ratio"]:
                    feeds_const["ratio"] = ratios[s["ratio"]]
                in_shape = store.shape(s["inputs"]["x"])
                wins = [(window(r0, r1, in_shape[2], s["resample"], s["pre_halo"], s["post_halo"]),
                         window(c0, c1, in_shape[3], s["resample"], s["pre_halo"], s["post_halo"]))
                        for (r0, r1, c0, c1) in p.grid]
                release = _arena_releases(wins) if tight else [False] * len(wins)
                for (r0, r1, c0, c1), (rw, cw), free_arena in zip(p.grid, wins, release):
                    if has_arena:
                        runner.release_arena = free_arena
                    feeds = dict(feeds_const)
                    for key, t in s["inputs"].items():
                        feeds[key] = store.read(t, rw.start, rw.stop, cw.start, cw.stop, scratch=key)
                    if s["norm"] and norm == "tile":
                        local = NormStats(feeds["x"].shape[1], self.tensors[s["norm"]]["groups"])
                        local.add(feeds["x"])
                        feeds["mean"], feeds["rstd"] = local.mean_rstd(self.eps)
                    out = runner.infer(s["graph"], feeds)
                    self.calls += 1
                    for key, t in s["outputs"].items():
                        y = out[key]
                        core = y[..., rw.crop:rw.crop + r1 - r0, cw.crop:cw.crop + c1 - c0]
                        store.write(t, r0, c0, core if core.ndim == 4 else core[:, None])
                        if self.tensors[t]["groups"]:
                            self._accumulate(stats, t, key, out, core, rw.crop, r1 - r0)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                for t in [t for t, last in plan.last_use.items() if last == i and t not in keep]:
                    store.free(t)
                    stats.pop(t, None)
            result = {t: np.array(store.whole(t)) for t in keep}
            for t in keep:
                if self.tensors[t]["dtype"] == "int64":
                    result[t] = result[t][:, 0]
            return result
        finally:
            info.peak_disk_bytes = max(info.peak_disk_bytes, store.peak_disk_bytes)
            info.peak_store_bytes = max(info.peak_store_bytes, store.peak_ram_bytes)
            store.close()
            if tight:
                pool.clear()

    def _accumulate(self, stats: dict, t: str, key: str, out: dict, core: np.ndarray, crop: int, rows: int) -> None:
        """Add an output tile's core to tensor ``t``'s statistics: the graph's own row statistics when it
        gives them and the tile spans its output's whole width (no column halo to leave out), else
        summed here from the core."""
        acc = stats.setdefault(t, NormStats(self.tensors[t]["channels"], self.tensors[t]["groups"]))
        sums = out.get(f"{key}_sum")
        if sums is not None and core.shape[-1] == out[key].shape[-1]:
            acc.add_rows(out[f"{key}_ref"], sums[..., crop:crop + rows], out[f"{key}_sq"][..., crop:crop + rows],
                         core.shape[-1])
        else:
            acc.add(core)

    def _stats(self, name: str, array: np.ndarray, stats: dict) -> None:
        groups = self.tensors[name]["groups"]
        if groups:
            stats[name] = NormStats(self.tensors[name]["channels"], groups)
            stats[name].add(array)

    def run(self, chains: list[str], sources: dict, domains: dict, budget: int, keep: tuple,
            ratios: dict | None = None, tile=None, progress=None, norm: str = "global") -> tuple[dict, RunInfo]:
        """Plan then execute; returns ({kept tensor: array}, RunInfo)."""
        t0 = time.perf_counter()
        plan = self.plan(chains, domains, budget, keep, tile, tuple(sources))
        info = RunInfo(streamed=True, tiles=plan.tiles, predicted_peak_bytes=plan.peak_bytes,
                       predicted_disk_bytes=plan.disk_bytes)
        calls = self.calls
        out = self.execute(plan, sources, domains, ratios or {}, keep, info, progress, norm)
        info.seconds, info.graph_calls = time.perf_counter() - t0, self.calls - calls
        return out, info

    # -- the two requests ---------------------------------------------------------------------
    def stylize(self, x: np.ndarray, style_latent: np.ndarray, content_ratio: np.ndarray, output_ratio: np.ndarray,
                budget: int, tile=None, progress=None, norm: str = "global") -> tuple[np.ndarray, RunInfo]:
        """Preprocessed (1, 3, Hp, Wp) image + style latent (1, D, hs, ws) -> decoded (1, 3, Hp, Wp)."""
        stride = int(self.section["latent_stride"])
        domains = {"content": x.shape[2:], "style": tuple(d * stride for d in style_latent.shape[2:])}
        out, info = self.run(["content_encoder", "sga", "decoder"], {"image": x, "style_latent": style_latent},
                             domains, budget, ("output_image",), {"content_ratio": content_ratio,
                                                                  "output_ratio": output_ratio}, tile, progress, norm)
        return out["output_image"], info

    def encode_style(self, x: np.ndarray, budget: int, tile=None, progress=None) -> tuple[tuple, RunInfo]:
        """Preprocessed (1, 3, Hs, Ws) style image -> ((style latent, indices), RunInfo)."""
        domains = {"content": x.shape[2:], "style": x.shape[2:]}
        out, info = self.run(["style_encoder"], {"style_image": x}, domains, budget,
                             ("style_latent", "style_indices"), None, tile, progress)
        return (out["style_latent"], out["style_indices"]), info


def streaming_peak(executor: StreamingExecutor, height: int, width: int, style_hw: tuple, budget: int) -> Plan:
    """The plan of stylizing a height x width content (unpadded) with a style of ``style_hw`` pixels."""
    stride = int(executor.section["latent_stride"])
    domains = {"content": (_pad_size(height, stride), _pad_size(width, stride)), "style": tuple(style_hw)}
    return executor.plan(["content_encoder", "sga", "decoder"], domains, budget, ("output_image",),
                         sources=("image", "style_latent"))
