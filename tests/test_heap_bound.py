"""util.heap.bound_heap: freed blocks leave the process, so a streamed run stays inside its plan's memory.

In a fresh subprocess (the setting is process-wide): after a large free has raised glibc's dynamic mmap
threshold, 2 MiB blocks come from the heap, and freeing every other one leaves holes the process keeps;
with the threshold bounded they are unmapped at once."""
import json
import platform
import subprocess
import sys

import pytest

CHILD = r"""
import json, sys
from quantart_runtime.util.heap import bound_heap
ok = bound_heap() if sys.argv[1] == "bound" else None
def vm():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
big = bytearray(16 << 20); del big                  # raises the dynamic threshold (default behaviour)
blocks = [bytearray(2 << 20) for _ in range(64)]    # 128 MiB
before = vm()
del blocks[::2]                                     # 64 MiB freed, holes between the kept blocks
print(json.dumps({"ok": ok, "released": before - vm()}))
"""


def _released(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt's mmap threshold is glibc's")
def test_bound_heap_returns_freed_blocks():
    bound, default = _released("bound"), _released("default")
    assert bound["ok"] is True
    assert bound["released"] >= 60 << 20          # every freed 2 MiB block unmapped
    assert default["released"] < 16 << 20        # the default keeps them (what the bound is for)
