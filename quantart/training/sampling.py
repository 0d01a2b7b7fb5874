"""Deterministic, resumable, rank-sharded batch order for training.

The order is a pure function of (seed, epoch): every epoch is one seeded permutation of the dataset,
cut into global batches of batch_size × world_size samples, each rank taking its slice. Because of
that, a resumed run skips exactly the batches it already trained on and sees the same data as an
uninterrupted run, on any number of DataLoader workers.
"""
from __future__ import annotations

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableBatchSampler(Sampler):
    """Batches of dataset indices for this rank.

    `position` counts the batches handed out over the whole run; each `iter()` yields the rest of the
    current data epoch (so one Lightning epoch = one data epoch, or its remainder after a resume) and sets
    the dataset's epoch (its random crops) before the first index leaves. `resume(batches_done)` puts the
    position back to the batches a checkpoint had trained on (optimizer steps × accumulation).
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.n = len(dataset)
        if self.n < 1:
            raise ValueError("the training dataset is empty")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.position = 0

    def __len__(self) -> int:
        world, _ = _world()
        return max(1, self.n // (self.batch_size * world))

    def resume(self, batches_done: int) -> None:
        """Continue from batch ``batches_done`` of the data order (set when a checkpoint is restored)."""
        self.position = int(batches_done)

    def order(self, epoch: int) -> np.ndarray:
        """(batches per epoch, world, batch) global index layout of data epoch `epoch`."""
        world, _ = _world()
        per_epoch = len(self)
        need = per_epoch * world * self.batch_size
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch)])
        perm = rng.permutation(self.n)
        if need > self.n:  # fewer images than one global batch: wrap around
            perm = np.concatenate([perm] * (-(-need // self.n)))
        return perm[:need].reshape(per_epoch, world, self.batch_size)

    def __iter__(self):
        _, rank = _world()
        epoch, start = divmod(self.position, len(self))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        layout = self.order(epoch)
        for b in range(start, len(layout)):
            self.position += 1
            yield [int(i) for i in layout[b, rank]]
