"""What a streaming run is planned as and reports: ``StepPlan``, ``Plan``, ``RunInfo``, and which tiles of
a memory-bound step hand the backend's arena back (``_arena_releases``). The planner and executor are
``quantart_runtime.streaming``."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepPlan:
    """One step of a planned run: its tile grid and predicted working memory per tile."""
    step: dict
    out_shape: tuple
    grid: list
    work_bytes: int
    store_room: int = 0    # RAM the store may hold (live + reusable buffers) during this step: peak − work − io


@dataclass
class Plan:
    """A planned streaming run (see ``StreamingExecutor.plan``)."""
    steps: list
    on_disk: dict
    last_use: dict
    peak_bytes: int
    disk_bytes: int
    tiles: int
    ram_bytes: int = 0     # intermediates held in RAM at most
    budget: int = 0        # the memory budget it was planned for
    window_bytes: int = 0  # the largest step's input windows (read into reused scratch buffers)


@dataclass
class RunInfo:
    """What the last run did: ``streamed``, ``tiles``, ``peak_disk_bytes`` (temporary disk used),
    ``peak_store_bytes`` (intermediates held in RAM), the plan's ``predicted_peak_bytes`` /
    ``predicted_disk_bytes``, ``seconds`` and ``graph_calls``."""
    streamed: bool = False
    tiles: int = 0
    peak_disk_bytes: int = 0
    peak_store_bytes: int = 0
    predicted_peak_bytes: int = 0
    predicted_disk_bytes: int = 0
    seconds: float = 0.0
    graph_calls: int = 0
    extra: dict = field(default_factory=dict)


def _arena_releases(wins: list) -> list[bool]:
    """After which tiles of a memory-bound step the backend hands its free arena memory back: before a
    tile whose input window is larger (rows or columns) than every one since the last release, and after
    the step's last tile. Between equal tiles the arena is kept: the next tile reuses the same chunks
    (the plan budgets one tile's working memory) instead of faulting in fresh pages for every tile."""
    sizes = [(rw.stop - rw.start, cw.stop - cw.start) for rw, cw in wins]
    release, held = [], (0, 0)
    for i, (h, w) in enumerate(sizes):
        held = (max(held[0], h), max(held[1], w))
        nxt = sizes[i + 1] if i + 1 < len(sizes) else None
        release.append(nxt is None or nxt[0] > held[0] or nxt[1] > held[1])
        if release[-1]:
            held = (0, 0)
    return release
