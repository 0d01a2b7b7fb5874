"""Dead-code restart for Stage 1 codebooks: our addition, off by default (the official code has none).

A VQGAN trained on little data often uses few of its codes: a code that no encoder output is nearest to
gets no gradient and never moves. With `restart_codes: N` (flag `--restart-dead-codes N`) the codes that
were nearest to no latent during the last N training steps are set to latents of the current batch
(chosen at random, a little noise added), and their Adam moments are cleared — the "codebook restart" of
Dhariwal et al. 2020 (Jukebox) and Zeghidour et al. 2021 (SoundStream). The model's math is unchanged;
only the codebook weights move. Under DDP the usage is summed over all processes and rank 0 chooses the
new codes, which every process then receives, so the replicas stay identical.
"""
from __future__ import annotations

import torch


class DeadCodeRestart:
    """Counts code usage over a window of training steps and restarts the unused codes.

    Args: quantizer (a ``VectorQuantizer``), every (window length in steps, >= 1), noise (std of the
    noise added to a chosen latent, relative to the latents' std).
    """

    def __init__(self, quantizer: torch.nn.Module, every: int, noise: float = 0.01):
        if every < 1:
            raise ValueError(f"restart window must be >= 1 step, got {every}")
        self.quantizer, self.every, self.noise = quantizer, int(every), float(noise)
        self.usage = torch.zeros(quantizer.n_e, dtype=torch.int64)
        self.steps = 0

    def observe(self, indices: torch.Tensor) -> None:
        """Add one step's code indices (any shape) to the window's usage counts (kept on the indices'
        device: no host sync per training step)."""
        if self.usage.device != indices.device:
            self.usage = self.usage.to(indices.device)
        self.usage += torch.bincount(indices.detach().reshape(-1), minlength=self.quantizer.n_e)

    @torch.no_grad()
    def maybe_restart(self, latents, strategy=None, optimizer=None) -> dict | None:
        """End of a training step: at the end of each window restart the unused codes from ``latents()``
        (a callable giving this batch's encoder outputs before quantization, (B, C, H, W); called only
        at the end of a window). Returns ``{"codes_used": n,
        "codes_restarted": m}`` at the end of a window, else None.

        strategy: the Lightning strategy (usage is summed over processes, rank 0's choice broadcast);
        optimizer: the torch optimizer holding the codebook (its Adam moments for those rows are cleared).
        """
        self.steps += 1
        if self.steps % self.every:
            return None
        latents = latents()
        usage = self.usage.clone()
        if strategy is not None:
            usage = strategy.reduce(usage, reduce_op="sum")
        usage = usage.cpu()
        dead = torch.nonzero(usage == 0).flatten()
        weight = self.quantizer.embedding.weight
        if len(dead):
            flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, weight.shape[1]).to(weight.dtype)
            pick = torch.randint(len(flat), (len(dead),), device=flat.device)
            scale = flat.std().clamp_min(1e-6) * self.noise
            new = flat[pick] + scale * torch.randn(len(dead), flat.shape[1], device=flat.device, dtype=flat.dtype)
            if strategy is not None:
                new = strategy.broadcast(new, src=0)
            weight.data[dead.to(weight.device)] = new.to(weight.device)
            if optimizer is not None:
                state = optimizer.state.get(weight, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][dead.to(weight.device)] = 0
        self.usage.zero_()
        return {"codes_used": int((usage > 0).sum()), "codes_restarted": int(len(dead))}
