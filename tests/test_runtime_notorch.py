"""The deployment rule: quantart_runtime imports and stylizes with torch and quantart unimportable."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from runtime_helpers import STYLE_SIZE, encode, photo

BLOCKER = """
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "quantart"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")
        return None
sys.meta_path.insert(0, _Blocked())
for _name in [m for m in sys.modules if m.split(".")[0] in ("torch", "quantart")]:
    del sys.modules[_name]
"""

SCRIPT = BLOCKER + """
import json
try:
    import torch
    blocked = False
except ImportError:
    blocked = True
from quantart_runtime import Stylizer, load_image, save_image
from quantart_runtime.__main__ import main
model, content, style, out_api, out_dir = sys.argv[1:6]
st = Stylizer.load(model)
save_image(st.stylize(load_image(content), load_image(style), style_size=%d), out_api)
try:
    main(["stylize", "--model", model, "--style", style, "--style-size", "%d", "--no-progress", content,
          "-o", out_dir], standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"blocked": blocked, "cli_exit": code, "backend": st.backend,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "quantart"))}))
""" % (STYLE_SIZE, STYLE_SIZE)


def test_runtime_runs_without_torch(model_dir, tmp_path):
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    content.write_bytes(encode(photo(24, 36, 1)))
    style.write_bytes(encode(photo(32, 32, 2, "style")))
    out_api, out_dir = tmp_path / "api.png", tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), str(content), str(style), str(out_api),
                           str(out_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    from quantart_runtime import Stylizer
    from quantart_runtime.backends import choose_backend

    auto = choose_backend(model_dir).backend   # onnxruntime, or openvino with a verified BF16 plan
    assert report == {"blocked": True, "cli_exit": 0, "backend": auto, "loaded": []}

    from quantart_runtime.images import load_image

    expected = Stylizer.load(model_dir).stylize(load_image(content), load_image(style), style_size=STYLE_SIZE)
    np.testing.assert_array_equal(np.asarray(Image.open(out_api)), expected)
    np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "c.png")), expected)
