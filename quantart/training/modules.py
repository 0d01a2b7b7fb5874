"""LightningModules of both stages: manual optimization with two Adam(β = (0.5, 0.9)) optimizers,
generator then discriminator on every step, as the official code.

The Lightning checkpoint's `state_dict` is the wrapped model's own state_dict (official key names:
`encoder.*`, `loss.discriminator.*`, ...), so `quantart.load_model` reads the training checkpoints.
One training step = one generator and one discriminator update (after `accumulate` batches);
`step` below counts those (Lightning's global_step counts every optimizer.step, so twice as many).
"""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/inf; training stops before the weights are touched."""


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4]))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _QuantArtModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, learning_rate: float, accumulate: int = 1,
                 batch_sampler=None, meta: dict | None = None):
        super().__init__()
        self.model = model
        self.learning_rate = float(learning_rate)
        self.accumulate = int(accumulate)
        self.automatic_optimization = False
        self.batch_sampler = batch_sampler
        self.meta = dict(meta or {})
        self._micro = 0

    # -- the checkpoint carries the model's own (official) key names ---------------------------------
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        return self.model.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def step(self) -> int:
        """Completed training steps (generator + discriminator updates)."""
        return int(self.trainer.global_step) // 2 if self._trainer is not None else 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["quantart"] = {"config": self.model.config, "step": self.step, "micro": self._micro,
                                  "rng": _rng_state(), **self.meta}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get("quantart", {})
        if "rng" in info:
            _set_rng_state(info["rng"])
        step = int(checkpoint.get("global_step", 0)) // 2
        self._micro = int(info.get("micro", step * self.accumulate))
        if self.batch_sampler is not None:
            self.batch_sampler.resume(self._micro)

    # -- helpers --------------------------------------------------------------------------------------
    def _check_finite(self, what: str, loss: torch.Tensor, log: dict) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        bad = bool(self.trainer.strategy.reduce_boolean_decision(bad, all=False))
        if bad:
            parts = ", ".join(f"{k.split('/')[-1]}={float(v):.4g}" for k, v in log.items())
            raise NonFiniteLossError(f"non-finite {what} loss at step {self.step} ({parts}); stopped before "
                                     f"updating the weights; the last checkpoint is intact")

    def _backward(self, opt, loss: torch.Tensor) -> None:
        self.toggle_optimizer(opt)
        self.manual_backward(loss / self.accumulate)
        self.untoggle_optimizer(opt)

    def _generator_update(self, opt_g) -> bool:
        """Step the generator at the end of an accumulation window; True when it stepped."""
        stepped = self._micro % self.accumulate == self.accumulate - 1
        if stepped:
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
        return stepped

    def _discriminator_update(self, opt_d, d_loss: torch.Tensor, log_d: dict, stepped: bool) -> None:
        """Backward the discriminator loss; step with the generator's accumulation window."""
        self._check_finite("discriminator", d_loss, log_d)
        self._backward(opt_d, d_loss)
        self._micro += 1
        if stepped:
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)

    def _log(self, log_g: dict, log_d: dict, progress: tuple[str, ...]) -> None:
        logs = {**log_g, **log_d}
        self.log_dict({k: v for k, v in logs.items() if k not in progress}, on_step=True, logger=True)
        self.log_dict({k.split("/")[-1]: logs[k] for k in progress}, on_step=True, logger=True, prog_bar=True)

    def _adam(self, params):
        return torch.optim.Adam(params, lr=self.learning_rate, betas=(0.5, 0.9))


class Stage1Module(_QuantArtModule):
    """Trains a BaseVQGAN whose `loss` is a VQLPIPSWithDiscriminator (official VQModel.training_step).

    restart_codes: 0 (official) or N, restart the codes unused during the last N steps from encoder
    outputs (quantart.training.codebook, our addition against codebook collapse on small data).
    """

    def __init__(self, *args, restart_codes: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.restart = None
        if restart_codes and getattr(self.model, "use_quantize", True):
            from .codebook import DeadCodeRestart

            self.restart = DeadCodeRestart(self.model.quantize, restart_codes)

    def training_step(self, batch, batch_idx):
        """One training step on ``batch['image']``: a generator update (reconstruction, codebook,
        perceptual and, after ``disc_start``, adversarial loss), then a discriminator update on a fresh
        forward pass. Raises ``NonFiniteLossError`` when a loss is NaN/inf (before any weight changes).
        """
        x = batch["image"]
        opt_g, opt_d = self.optimizers()
        step, vq, loss_fn = self.step, self.model, self.model.loss
        quant, qloss, info = vq.encode(x)  # = vq(x), keeping the code indices
        xrec = vq.decode(quant)
        g_loss, log_g = loss_fn(qloss, x, xrec, 0, step, last_layer=vq.get_last_layer(), split="train")
        self._check_finite("generator", g_loss, log_g)
        self._backward(opt_g, g_loss)
        # the official code runs the discriminator pass as a second training_step: fresh forward
        # (after the generator update when not accumulating), no generator gradients
        g_stepped = self._generator_update(opt_g)
        if self.restart is not None:
            self.restart.observe(info[2])
            if g_stepped:
                done = self.restart.maybe_restart(lambda: vq.quant_conv(vq.encoder(x)), self.trainer.strategy,
                                                  opt_g.optimizer)
                if done:
                    log_g = {**log_g, **{f"train/{k}": float(v) for k, v in done.items()}}
        with torch.no_grad():
            xrec_d, qloss_d = vq(x)
        d_loss, log_d = loss_fn(qloss_d, x, xrec_d, 1, step, last_layer=None, split="train")
        self._discriminator_update(opt_d, d_loss, log_d, g_stepped)
        self._log(log_g, log_d, ("train/rec_loss", "train/total_loss", "train/disc_loss"))

    def configure_optimizers(self):
        """Two Adam optimizers: encoder/decoder/quantizer/convs (generator) and the discriminator."""
        vq = self.model
        gen = (list(vq.encoder.parameters()) + list(vq.decoder.parameters()) + list(vq.quantize.parameters())
               + list(vq.quant_conv.parameters()) + list(vq.post_quant_conv.parameters()))
        return [self._adam(gen), self._adam(vq.loss.discriminator.parameters())]

    @torch.no_grad()
    def preview(self, batch, n: int = 4):
        """Rows ``[input, reconstruction]`` of the first ``n`` images of ``batch`` (for image grids)."""
        x = batch["image"][:n]
        return [[xi, ri] for xi, ri in zip(x, self.model(x)[0])]


class Stage2Module(_QuantArtModule):
    """Trains model_x2y (SGA) and the latent discriminator of a StyleTransfer whose `loss` is a
    VQLPIPS_Ref; encoders, decoder and quantizers are frozen and stay in eval mode."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.model.frozen_parameters():
            p.requires_grad = False

    def frozen_modules(self):
        """The modules that stay frozen and in eval mode: encoders, decoder, quantizers and their convs."""
        m = self.model
        return [m.encoder, m.encoder_real, m.decoder, m.quant_conv, m.quant_conv_real, m.post_quant_conv,
                m.quantize_enc, m.quantize_dec]

    def train(self, mode: bool = True):
        """Set the training mode like ``nn.Module.train``, keeping the frozen modules in eval mode."""
        super().train(mode)
        self._freeze_modes()
        return self

    def _freeze_modes(self) -> None:
        for module in self.frozen_modules():
            if module.training:
                module.eval()

    # Lightning restores each submodule's mode by itself (around validation, at the end): re-assert
    def on_train_batch_start(self, batch, batch_idx):
        """Lightning hook: re-assert eval mode on the frozen modules before every batch."""
        self._freeze_modes()

    def on_train_end(self):
        """Lightning hook: re-assert eval mode on the frozen modules after training."""
        self._freeze_modes()

    def training_step(self, batch, batch_idx):
        """One training step on ``batch['content']`` / ``batch['style']``: an SGA (generator) update
        with the style, reverse and adversarial losses, then a latent discriminator update.
        Raises ``NonFiniteLossError`` when a loss is NaN/inf (before any weight changes).
        """
        x, ref = batch["content"], batch["style"]
        opt_g, opt_d = self.optimizers()
        step, st, loss_fn = self.step, self.model, self.model.loss
        with torch.no_grad():  # frozen encoders: computed once for both passes
            h_x = st.content_latent(x)
            quant_ref = st.encode_real(ref)[0]
        quant_x, quant_y, diff_x2y, _ = st.stylize_latent(h_x, quant_ref)
        quant_x = quant_x.detach()
        g_loss, _, log_g = loss_fn(diff_x2y, quant_ref, quant_y, quant_x, 0, step, split="train")
        self._check_finite("generator", g_loss, log_g)
        self._backward(opt_g, g_loss)
        g_stepped = self._generator_update(opt_g)
        with torch.no_grad():
            _, quant_y_d, diff_d, _ = st.stylize_latent(h_x, quant_ref)
        d_loss, log_d = loss_fn(diff_d, quant_ref, quant_y_d, quant_x, 1, step, split="train")
        self._discriminator_update(opt_d, d_loss, log_d, g_stepped)
        self._log(log_g, log_d, ("train/style_loss", "train/reverse_loss", "train/disc_loss"))

    def configure_optimizers(self):
        """Two Adam optimizers: ``model_x2y`` (SGA) and the latent discriminator."""
        return [self._adam(self.model.model_x2y.parameters()),
                self._adam(self.model.loss.discriminator.parameters())]

    @torch.no_grad()
    def preview(self, batch, n: int = 4):
        """Rows ``[content, style, stylized]`` of the first ``n`` pairs of ``batch`` (for image grids)."""
        x, ref = batch["content"][:n], batch["style"][:n]
        out = self.model.stylize(x, ref)
        return [[a, b, c] for a, b, c in zip(x, ref, out)]
