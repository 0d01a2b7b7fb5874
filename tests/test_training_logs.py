"""The training CSV log keeps its history (quantart.training.logs), without a training run: a resumed
run's first row drops only the interrupted run's rows from that step on (a row cut short by the kill
too), and a fresh run into the folder keeps the earlier log beside it. The kill-and-resume of a real
run is tests/test_training.py::test_sigkill_and_resume_equals_uninterrupted (slow lane)."""
from __future__ import annotations

from quantart.training.logs import HistoryCSVLogger, read_metrics


def _log(out, steps, resuming, value=1.0):
    logger = HistoryCSVLogger(str(out), name="logs", version="", resuming=resuming)
    for s in steps:
        logger.log_metrics({"loss": value + s, **({"extra": 0.5} if s >= 4 else {})}, step=s)
        logger.save()
    return out / "logs" / "metrics.csv"


def test_resume_keeps_the_rows_before_its_first_step(tmp_path):
    path = _log(tmp_path, range(0, 6), resuming=False)
    with open(path, "a") as f:
        f.write("6.0,0.")                        # a row the kill cut short
    _log(tmp_path, range(3, 8), resuming=True, value=10.0)
    header, rows = read_metrics(path)
    assert [int(r["step"]) for r in rows] == list(range(8))
    assert [float(r["loss"]) for r in rows] == [1.0 + s for s in range(3)] + [10.0 + s for s in range(3, 8)]
    assert sorted(header) == ["extra", "loss", "step"]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]


def test_a_fresh_run_keeps_the_earlier_log_beside(tmp_path):
    path = _log(tmp_path, range(3), resuming=False)
    _log(tmp_path, range(2), resuming=False, value=5.0)
    kept = [p for p in path.parent.iterdir() if p.name.startswith("metrics.before-")]
    assert len(kept) == 1 and [int(r["step"]) for r in read_metrics(kept[0])[1]] == [0, 1, 2]
    assert [float(r["loss"]) for r in read_metrics(path)[1]] == [5.0, 6.0]
