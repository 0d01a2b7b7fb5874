"""Training logs that keep their history: CSV (always) and TensorBoard (where installed) in the run folder.

Lightning's CSV logger deletes ``metrics.csv`` when a run starts in a folder that has one, so resuming
an interrupted run into its folder would lose the history before the interruption. Here:

* resuming (``--resume``): the rows already logged stay; the rows the interrupted run logged *after*
  the checkpoint it resumes from are dropped when the resumed run logs its first row (they are logged
  again, so every step is in the file exactly once, in order). The file is rewritten atomically.
* a fresh run into a folder with logs: the old ``metrics.csv`` is kept beside, renamed
  ``metrics.before-<UTC time>.csv`` (nothing the user did not name is deleted).
* TensorBoard: on resume the writer gets ``purge_step`` (the checkpoint's logger step), TensorBoard's own
  way to drop the interrupted run's events from that step on when it reads the folder.
"""
from __future__ import annotations

import csv
import io
import logging
import time
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from quantart_runtime.util import write_text
from quantart_runtime.util.atomic import replace

log = logging.getLogger("quantart")
METRICS = ExperimentWriter.NAME_METRICS_FILE


def _step(row: dict) -> int | None:
    try:
        return int(float(row.get("step", "")))
    except (TypeError, ValueError):
        return None


def read_metrics(path) -> tuple[list[str], list[dict]]:
    """(header, rows) of a metrics.csv; a row cut short by a kill (no step) is left out."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if _step(r) is not None and None not in r and None not in r.values()]
        return list(reader.fieldnames or []), rows


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer without the deletion: the earlier rows stay, up to the first step this run
    logs (see the module docstring)."""

    def __init__(self, log_dir: str, resuming: bool):
        self._resuming = resuming
        self._history: tuple[list[str], list[dict]] | None = None
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:   # Lightning's removes metrics.csv here
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self._resuming:
            self._history = read_metrics(path)
            return
        kept = path.with_name(f"metrics.before-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.csv")
        replace(path, kept)
        log.info("%s: the earlier run's log kept as %s (a fresh run, not --resume)", path, kept.name)

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        """Record one row; the first one of a resumed run first drops the history from its step on."""
        if self._history is not None and step is not None:
            header, rows = self._history
            self._history = None
            kept = [r for r in rows if _step(r) < int(step)]
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            write_text(self.metrics_file_path, out.getvalue())
            self.metrics_keys = sorted(header)
        super().log_metrics(metrics_dict, step)


class HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps the history of the folder's earlier runs (see the module docstring)."""

    def __init__(self, *args, resuming: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._resuming = resuming

    @property
    def experiment(self) -> ExperimentWriter:
        """The writer (created on first use)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self._resuming)
        return self._experiment


def logger_step(checkpoint_path) -> int:
    """The logger step a Lightning checkpoint resumes from (its fit loop's ``_batches_that_stepped``)."""
    import torch

    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])


def run_loggers(out: Path, resume_from: str | None = None) -> list:
    """The run's loggers: CSV in ``<out>/logs``, TensorBoard in ``<out>/tensorboard`` where installed."""
    loggers = [HistoryCSVLogger(str(out), name="logs", version="", resuming=resume_from is not None)]
    try:
        import tensorboard  # noqa: F401  (the logger needs it or tensorboardX)
        from lightning.pytorch.loggers import TensorBoardLogger
    except ImportError:
        warnings.warn("tensorboard is not installed: CSV logs only (pip install tensorboard for TensorBoard logs)",
                      stacklevel=2)
        return loggers
    extra = {"purge_step": logger_step(resume_from)} if resume_from is not None else {}
    loggers.append(TensorBoardLogger(str(out), name="tensorboard", version="", **extra))
    return loggers
