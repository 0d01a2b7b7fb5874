"""Callbacks: atomic checkpoints every N steps and at the end, and progress image grids."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from quantart_runtime.util.atomic import replace

from .grid import save_grid

LAST = "last.ckpt"


class AtomicCheckpoint(Checkpoint):
    """Writes `step-NNNNNNN.ckpt` every `every_n_steps` training steps and at the end, each to a temp
    file in the same folder then renamed into place, and points `last.ckpt` at the newest (also
    replaced atomically): a crash never leaves a half-written file as the latest checkpoint. Keeps the
    `keep` newest step files. (Lightning's ModelCheckpoint writes the file in place, hence this class.)"""

    def __init__(self, dirpath, every_n_steps: int, keep: int = 2):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.keep = max(int(keep), 1)
        self.last_saved_step: int | None = None
        self.saved: list[Path] = []

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a Lightning checkpoint."""
        return "AtomicCheckpoint"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Lightning hook: save when the step is a positive multiple of ``every_n_steps``."""
        step = pl_module.step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_saved_step:
            self.save(trainer, step)

    def on_train_end(self, trainer, pl_module):
        """Lightning hook: save the final step unless it was just saved."""
        if pl_module.step != self.last_saved_step:
            self.save(trainer, pl_module.step)

    def save(self, trainer: L.Trainer, step: int) -> Path:
        """Write ``step-NNNNNNN.ckpt`` atomically, point ``last.ckpt`` at it and drop old step files.

        Collective: every rank calls it, rank 0 writes. Returns the step file's path.
        Raises ``OSError`` when the folder cannot be written.
        """
        final = self.dirpath / f"step-{step:07d}.ckpt"
        tmp = self.dirpath / f".{final.name}.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            replace(tmp, final)
            link_tmp = self.dirpath / f".{LAST}.tmp"
            link_tmp.unlink(missing_ok=True)
            try:
                os.link(final, link_tmp)  # hard link: no second copy of the bytes
            except OSError:
                import shutil
                shutil.copyfile(final, link_tmp)
            replace(link_tmp, self.dirpath / LAST)
            self.saved = [p for p in self.saved if p != final] + [final]
            for old in self.saved[:-self.keep]:
                old.unlink(missing_ok=True)
            self.saved = self.saved[-self.keep:]
        trainer.strategy.barrier("quantart-checkpoint")
        self.last_saved_step = step
        return final

    def state_dict(self):
        """The callback's resumable state: the last saved step and the kept step files."""
        return {"last_saved_step": self.last_saved_step, "saved": [str(p) for p in self.saved]}

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict`'s state on resume."""
        self.last_saved_step = state_dict.get("last_saved_step")
        self.saved = [Path(p) for p in state_dict.get("saved", [])]


class ImageGrids(L.Callback):
    """Every `every_n_steps` steps, rank 0 writes images/step-NNNNNNN.png: rows of
    input | reconstruction (Stage 1) or content | style | output (Stage 2) from the current batch."""

    def __init__(self, dirpath, every_n_steps: int, max_rows: int = 4):
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.max_rows = max_rows
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Lightning hook: on rank 0, every ``every_n_steps`` steps, write the preview grid."""
        step = pl_module.step
        if (self.every_n_steps < 1 or step == 0 or step % self.every_n_steps or step == self._last
                or not trainer.is_global_zero):
            return
        self._last = step
        rows = pl_module.preview(batch, self.max_rows)
        save_grid(rows, self.dirpath / f"step-{step:07d}.png")
