"""Memory bounded by the model: the peak working memory of a request and the largest image that fits.

Attention memory grows with the square of the token count, so a pixel limit alone cannot bound a
request. From the manifest's ``geometry`` (written by quantart-export; derived from ``architecture``
for older manifests) this module knows, per resolution level of the VQGAN encoder/decoder, its stride,
channels and whether it attends, plus the SGA blocks at the latent. A request of ``batch`` images of
padded size H x W then needs, at its worst point (the graphs run one after another, so the peak is the
largest level of the largest graph):

    batch * (CONV_TENSORS * 4 * C * T  +  ATTN_BYTES_PER_SCORE * T_q * T_k)  +  IO_BYTES_PER_PIXEL * H * W

with ``T = H*W / stride**2`` the level's tokens, ``T_k`` the key tokens (the style latent for SGA
cross-attention). ``ATTN_BYTES_PER_SCORE = 12``: three fp32 copies of the score matrix are live
(scaled scores, softmax, its input to the second matmul); measured on the tiny test model with ONNX
Runtime CPU (peak RSS over the loaded model: 33 / 80 / 370 / 1124 MB at 96² / 128² / 192² / 256² against
predicted 64 / 199 / 987 / 3098 MB with the runner's shared CPU arena; 59 / 171 / 774 MB with one arena per
session, before it), so the estimate is an upper bound.

**Fused attention** (``Geometry.fused_attention``: the runner runs every attention as ONNX Runtime's
``com.microsoft.MultiHeadAttention``, the ``ort_fused`` graphs of the manifest; ``Runner.linear_attention``)
keeps no score matrix: flash attention holds one L2-sized block of scores per thread. The attention term
is then linear, ``FUSED_ATTN_TENSORS * 4 * C * (T_q + T_k)`` (the block's q / k / v, their (B, T, C)
copies and the output), and the activations bound the size. Their count, never binding while score
matrices dominated, measures within a few percent of the tiny model's full-resolution level, so the fused
estimate carries ``FUSED_MARGIN``. Measured the same way (tiny test model, fused graphs, the ONNX Runtime
runner's shared CPU arena; peak RSS over the loaded model): 12 / 19 / 58 / 86 / 235 / 347 MB at
96² / 128² / 192² / 256² / 384² / 512² against 17 / 31 / 69 / 122 / 275 / 488 MB estimated
(benchmarks/results/attention_memory_tiny.md; the standard graphs at 384² and up fail under a 2 GiB limit).

Above the untiled limit an image **streams** (``quantart_runtime.streaming``): its plan predicts, from the
same per-tensor constants, the peak of one tile's working memory (``CONV_TENSORS`` live activations of the
tile's window, ``ATTN_BYTES_PER_SCORE`` per score of a query tile against all keys) plus the intermediates
held in RAM, and the temporary disk used by the rest; a plan above the budget or the free disk is refused in
one line before any work.

The **budget** is a byte count: ``--memory-budget`` / ``QUANTART_MEMORY_BUDGET`` (``"6G"``, ``"512M"``,
a plain byte count, or a fraction ``"0.3"`` of the available memory); default ``DEFAULT_FRACTION`` of
the memory available now (``MemAvailable``, the cgroup limit, and ``RLIMIT_AS`` headroom: the least).
"""
from __future__ import annotations

import math
import os
import re
import resource
from dataclasses import dataclass

from .errors import ModelError

BUDGET_ENV = "QUANTART_MEMORY_BUDGET"
DEFAULT_FRACTION = 0.5
ATTN_BYTES_PER_SCORE = 12       # three live fp32 copies of each attention score
FUSED_ATTN_TENSORS = 3          # fused attention: fp32 (C, T) tensors per query + key token (q/k/v, copies, out)
FUSED_MARGIN = 1.25             # fused: the activation counts, no longer covered by a score matrix, plus 25 %
CONV_TENSORS = 6                # live activations of one level (block input, norm, conv, skip, ...)
IO_BYTES_PER_PIXEL = 3 * (4 + 4 + 1 + 1) + 4  # float input + output, uint8 in/out, padding copy
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Level:
    """One resolution level of the encoder/decoder: ``stride`` to the image, the most channels a
    tensor at this resolution has, and whether an attention block runs here."""
    stride: int
    channels: int
    attention: bool


@dataclass(frozen=True)
class Geometry:
    """What the memory estimate needs from a model (see the module docstring)."""
    latent_stride: int
    embed_dim: int
    levels: tuple[Level, ...]
    sga_blocks: int = 0
    sga_self_attention: bool = True
    fused_attention: bool = False   # attention runs fused, in memory linear in the tokens (not in the manifest)

    def with_fused_attention(self, fused: bool = True) -> "Geometry":
        """This geometry with attention fused (``True``: a runner with ``linear_attention``) or not."""
        from dataclasses import replace

        return replace(self, fused_attention=bool(fused))

    def attention_bytes(self, channels: int, q_tokens: float, k_tokens: float) -> float:
        """Working memory of one attention beyond the level's activations: the score matrices, or with
        fused attention the linear term (module docstring)."""
        if self.fused_attention:
            return FUSED_ATTN_TENSORS * 4 * channels * (q_tokens + k_tokens)
        return ATTN_BYTES_PER_SCORE * q_tokens * k_tokens

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_manifest(cls, manifest: dict) -> "Geometry":
        """The manifest's ``geometry`` field; for manifests written before it existed, derived from
        ``architecture.ddconfig``; without either, a conservative guess (attention at every level,
        512 channels). Raises ``ModelError`` for a malformed field."""
        stride = int(manifest["latent_stride"])
        embed = int(manifest.get("embed_dim") or 256)
        geo = manifest.get("geometry")
        try:
            if isinstance(geo, dict):
                levels = tuple(Level(int(lv["stride"]), int(lv["channels"]), bool(lv["attention"]))
                               for lv in geo["levels"])
                return cls(stride, embed, levels, int(geo.get("sga_blocks", 0)),
                           bool(geo.get("sga_self_attention", True)))
            arch = manifest.get("architecture") or {}
            if isinstance(arch.get("ddconfig"), dict):
                return cls.from_config(arch, stride)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"manifest.json geometry is malformed ({exc})") from None
        n = max(1, int(round(math.log2(stride))) + 1)
        return cls(stride, embed, tuple(Level(2 ** i, 512, True) for i in range(n)), 6, True)

    @classmethod
    def from_config(cls, arch: dict, stride: int | None = None) -> "Geometry":
        """From a model config (``ddconfig`` with ch, ch_mult, resolution, attn_resolutions; ``sga``)."""
        dd = arch["ddconfig"]
        mult = [int(m) for m in dd["ch_mult"]]
        ch, res = int(dd["ch"]), int(dd["resolution"])
        attn = {int(r) for r in dd.get("attn_resolutions", [])}
        levels = []
        for i in range(len(mult)):
            chans = ch * max(mult[i], mult[i + 1] if i + 1 < len(mult) else mult[i], mult[i - 1] if i else 1)
            last = i == len(mult) - 1
            levels.append(Level(2 ** i, max(chans, int(dd.get("z_channels", 0)) if last else 0),
                                last or (res // 2 ** i) in attn))  # the mid block attends at the latent
        sga = arch.get("sga") or arch  # quantart >= 0.2 records the SGA options flat (use_selfatt, block_num)
        blocks = int(sga.get("block_num", 6)) if arch.get("kind", "stage2") == "stage2" else 0
        return cls(int(stride or 2 ** (len(mult) - 1)), int(arch.get("embed_dim") or dd.get("z_channels")),
                   tuple(levels), blocks, bool(sga.get("use_selfatt", True)))

    def as_dict(self) -> dict:
        """The manifest's ``geometry`` field."""
        return {"levels": [{"stride": lv.stride, "channels": lv.channels, "attention": lv.attention}
                           for lv in self.levels],
                "sga_blocks": self.sga_blocks, "sga_self_attention": self.sga_self_attention}

    # -- the estimate ------------------------------------------------------------------------
    def peak_bytes(self, height: int, width: int, batch: int = 1, style_tokens: int | None = None) -> int:
        """Peak working memory (bytes) of stylizing ``batch`` images of padded size height x width
        against a style latent of ``style_tokens`` tokens (``None``: encoding a style of this size)."""
        pixels = height * width
        worst = 0
        for lv in self.levels:
            tokens = pixels / (lv.stride * lv.stride)
            here = CONV_TENSORS * 4 * lv.channels * tokens
            if lv.attention:
                here += self.attention_bytes(lv.channels, tokens, tokens)
            worst = max(worst, here)
        sga = 0.0
        if style_tokens is not None and self.sga_blocks:
            latent = pixels / (self.latent_stride ** 2)
            keys = max(latent if self.sga_self_attention else 0, style_tokens)
            sga = CONV_TENSORS * 4 * self.embed_dim * latent + self.attention_bytes(self.embed_dim, latent, keys)
        worst = max(worst, sga)
        if self.fused_attention:   # activation-bound now, and those counts are tight (module docstring)
            worst *= FUSED_MARGIN
        return int(batch * (worst + IO_BYTES_PER_PIXEL * pixels))

    def tokens(self, height: int, width: int) -> int:
        """Latent tokens of a padded height x width image."""
        return (height // self.latent_stride) * (width // self.latent_stride)


def _padded(n: float, stride: int) -> int:
    return max(stride, -(-int(math.ceil(n)) // stride) * stride)


# -- the budget -----------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes this process could still allocate: the least of MemAvailable, the cgroup's free limit
    and the address-space (RLIMIT_AS) headroom."""
    candidates = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            with open(limit) as f:
                text = f.read().strip()
            if text != "max" and int(text) < 1 << 60:
                with open(usage) as f:
                    candidates.append(max(0, int(text) - int(f.read().strip())))
            break
        except (OSError, ValueError):
            continue
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append(max(0, soft - _vm_size()))
    return min(candidates) if candidates else 4 << 30


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def parse_budget(value) -> int:
    """A budget option -> bytes: an int, ``"6G"``/``"512M"``/``"123456"``, or a fraction in (0, 1]
    of the available memory (``"0.3"``, ``0.3``). Raises ``ValueError`` with a one-line reason."""
    if isinstance(value, bool):
        raise ValueError(f"memory budget must be bytes or a fraction, got {value!r}")
    if isinstance(value, float) or (isinstance(value, str) and re.fullmatch(r"\s*0?\.\d+\s*|\s*1\.0*\s*", value)):
        fraction = float(value)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"memory budget fraction must be in (0, 1], got {value}")
        return int(fraction * available_memory())
    if isinstance(value, int):
        number = value
    else:
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
        if not found:
            raise ValueError(f"memory budget {value!r} is not bytes (e.g. 6G, 512M) or a fraction (e.g. 0.3)")
        number = int(float(found.group(1)) * _UNITS[found.group(2).upper()])
    if number < 1 << 20:
        raise ValueError(f"memory budget {value!r} is below 1 MiB")
    return number


def resolve_budget(value=None) -> int:
    """The budget in bytes: ``value`` if given, else ``$QUANTART_MEMORY_BUDGET``, else
    ``DEFAULT_FRACTION`` of :func:`available_memory`."""
    if value is None:
        value = os.environ.get(BUDGET_ENV) or None
    if value is None:
        return int(DEFAULT_FRACTION * available_memory())
    return parse_budget(value)


# -- the policy -----------------------------------------------------------------------------------
class SizePolicy:
    """One size policy for every entry point: which content / style size a request may run at.

    Args: geometry: the model's :class:`Geometry`; budget: bytes (see :func:`resolve_budget`);
    style_tokens: style latent tokens assumed for content requests when a call does not give them
    (default: those of a 256 x 256 style).
    """

    def __init__(self, geometry: Geometry, budget: int, style_tokens: int | None = None):
        self.geometry = geometry
        self.budget = int(budget)
        self.style_tokens = style_tokens if style_tokens is not None else geometry.tokens(256, 256)

    def fits(self, height: int, width: int, batch: int = 1, style_tokens: int | None = None) -> bool:
        """Whether ``batch`` contents of this (unpadded) size fit the budget."""
        s = self.geometry.latent_stride
        return self.geometry.peak_bytes(_padded(height, s), _padded(width, s), batch,
                                        style_tokens if style_tokens is not None else self.style_tokens) <= self.budget

    def max_batch(self, height: int, width: int, style_tokens: int | None = None, cap: int = 1024) -> int:
        """How many contents of this size fit in one graph call (0: not even one)."""
        s = self.geometry.latent_stride
        one = self.geometry.peak_bytes(_padded(height, s), _padded(width, s), 1,
                                       style_tokens if style_tokens is not None else self.style_tokens)
        return int(min(cap, self.budget // max(one, 1)))

    def max_side(self, batch: int = 1, style_tokens: int | None = None) -> int:
        """The largest square side (a multiple of the latent stride) whose request fits; 0 if none."""
        s = self.geometry.latent_stride
        lo, hi = 0, 1 << 16
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.fits(mid * s, mid * s, batch, style_tokens):
                lo = mid
            else:
                hi = mid
        return lo * s

    def max_tokens(self, batch: int = 1) -> int:
        """Latent tokens of the largest square request that fits."""
        side = self.max_side(batch)
        return self.geometry.tokens(side, side)

    def fit(self, height: int, width: int, style_tokens: int | None = None) -> tuple[int, int]:
        """The (height, width) a content of this size runs at: itself when it fits, else scaled down
        (aspect kept) to fit. Never below one pixel a side."""
        if self.fits(height, width, 1, style_tokens):
            return height, width
        side = max(self.max_side(1, style_tokens), self.geometry.latent_stride)
        scale = min(1.0, side / math.sqrt(height * width))

        def size(s):
            return max(1, round(height * s)), max(1, round(width * s))

        while not self.fits(*size(scale), 1, style_tokens) and max(size(scale)) > 1:
            scale *= 0.97
        return size(scale)

    def fit_style(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a style encoding may run at (the style encoder alone): itself or scaled
        down to fit."""
        s = self.geometry.latent_stride

        def ok(h, w):
            return self.geometry.peak_bytes(_padded(h, s), _padded(w, s), 1, None) <= self.budget

        if ok(height, width):
            return height, width
        h, w = height, width
        while not ok(h, w) and max(h, w) > s:
            h, w = max(s, int(h * 0.9)), max(s, int(w * 0.9))
        return h, w

    def describe(self) -> str:
        """One line for logs and ``--help``-like output."""
        return (f"memory budget {self.budget / 2**30:.2f} GiB: max side {self.max_side()} px "
                f"({self.max_tokens()} latent tokens) at batch 1")
