"""Training of both stages on CPU with tiny configurations: the losses fall, a run killed with SIGKILL
resumes to exactly the uninterrupted result, two DDP processes (gloo) stay identical, a non-finite
loss stops the run with the step, checkpoints load with quantart.load_model, CLI errors are one line."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import quantart
from quantart.training import NonFiniteLossError, apply_overrides, fit, preset
from quantart.training.cli import train
from quantart.training.logs import read_metrics

TINY = dict(ddconfig=dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=8,
                          ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
            n_embed=32, embed_dim=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models train several times faster on one thread: each op is too small to share between
    OpenMP threads, and on a busy 2-core machine the hand-offs dominate (the subprocess runs below set
    OMP_NUM_THREADS=1 for the same reason)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(folder, n, size=24, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(base).resize((size, size), Image.BILINEAR).save(folder / f"{i}.png")
    return folder


def _metric(run, key):
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    return [float(r[key]) for r in rows if r.get(key)]


def stage1_spec(tmp_path, data, **kw):
    spec = preset("stage1", "tiny")
    spec["model"] = dict(TINY)
    kw = {"batch_size": 4, **kw}
    return apply_overrides(spec, data={"folder": str(data)}, out=str(tmp_path / "s1"), size=16,
                           log_every=1, image_every=0, accelerator="cpu", **kw)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """100 steps of the tiny VQGAN on 8 images (the discriminator joins at step 80): long enough for the
    reconstruction loss to leave its early plateau (~0.35) and fall clearly (to ~0.24 at this seed)."""
    tmp = tmp_path_factory.mktemp("stage1")
    data = _images(tmp / "data", 8)
    spec = stage1_spec(tmp, data, max_steps=100, every_n_steps=50, base_lr=5e-4,
                       loss=dict(disc_start=80, disc_ndf=8, disc_num_layers=1))
    spec["image_every"] = 50
    result = fit(spec, progress_bar=False)
    return result


def test_stage1_l1_falls_and_outputs_load(stage1_run):
    l1 = _metric(stage1_run.out, "rec_loss")  # mean |x - x̂| (LPIPS off here), the official name
    first, last = np.mean(l1[:5]), np.mean(l1[-5:])
    assert last <= 0.7 * first, (first, last)
    vq = quantart.load_model(stage1_run.last_checkpoint)
    assert isinstance(vq, quantart.BaseVQGAN)
    saved = quantart.load_model(stage1_run.model_dir)
    for k, v in vq.state_dict().items():
        assert torch.equal(v, saved.state_dict()[k])
    ckpt = torch.load(stage1_run.last_checkpoint, weights_only=True)
    assert ckpt["global_step"] == 200 and any(k.startswith("loss.discriminator.main.0") for k in ckpt["state_dict"])
    assert sorted(p.name for p in (stage1_run.out / "checkpoints").glob("step-*.ckpt")) == \
        ["step-0000050.ckpt", "step-0000100.ckpt"]
    assert (stage1_run.out / "images" / "step-0000100.png").exists()


def _stage1_ckpt(path, seed):
    torch.manual_seed(seed)
    vq = quantart.BaseVQGAN(TINY["ddconfig"], TINY["n_embed"], TINY["embed_dim"])
    vq.quantize.embedding.weight.data.normal_()
    return quantart.save_model(vq, path)


def stage2_spec(tmp_path, **kw):
    content = _images(tmp_path / "content", 4, 32, seed=1)
    style = _images(tmp_path / "style", 4, 32, seed=2)
    spec = preset("stage2", "tiny")
    spec["model"] = dict(TINY, sga=dict(block_num=1, residual=False, use_conv=True, use_selfatt=True))
    return apply_overrides(
        spec, data={"content": str(content), "style": str(style)}, out=str(tmp_path / "s2"), size=32, batch_size=2,
        log_every=1, image_every=0, accelerator="cpu",
        model={"checkpoint_encoder": str(_stage1_ckpt(tmp_path / "enc", 1)),
               "checkpoint_decoder": str(_stage1_ckpt(tmp_path / "dec", 2))},
        loss={"disc_in_channels": 8, "disc_ndf": 8}, **kw)


def test_stage2_style_loss_falls_and_is_a_full_model(tmp_path):
    spec = stage2_spec(tmp_path, max_steps=60, every_n_steps=60, base_lr=5e-4)
    result = fit(spec, progress_bar=False)
    style = _metric(result.out, "style_loss")
    assert np.mean(style[-5:]) < 0.7 * np.mean(style[:5]), style
    st = quantart.load_model(result.last_checkpoint)
    assert isinstance(st, quantart.StyleTransfer)
    enc = quantart.load_model(tmp_path / "enc")
    assert torch.equal(st.encoder.conv_in.weight, enc.encoder.conv_in.weight)  # frozen parts untouched
    assert not torch.equal(st.model_x2y.blocks[0].attn_block.q.weight,
                           quantart.StyleTransfer(**{k: v for k, v in st.config.items() if k != "kind"})
                           .model_x2y.blocks[0].attn_block.q.weight)
    assert result.module.model.encoder.training is False


RUN = textwrap.dedent("""
    import os, sys, signal, json
    import lightning as L
    from quantart.training import fit
    spec = json.load(open(sys.argv[1]))
    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, m, batch, i):
            if int(os.environ.get("KILL_AT", "-1")) == m.step:
                os.kill(os.getpid(), signal.SIGKILL)
    fit(spec, resume=sys.argv[2] if len(sys.argv) > 2 else None, progress_bar=False, callbacks=[Kill()])
""")


def _run(tmp_path, spec, *args, env=None):
    import json
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "run.py").write_text(RUN)
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "spec.json"), *args],
                          env=e, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    """Killed with SIGKILL (in a child process) at step 8, resumed from ``last``: the end state equals
    an uninterrupted run's. The uninterrupted run and the resume run in this process (one thread, like
    the child), so only the killed run pays for a process start."""
    data = _images(tmp_path / "data", 6)
    loss = dict(disc_start=3, disc_ndf=8, disc_num_layers=1)
    full = stage1_spec(tmp_path / "a", data, max_steps=12, every_n_steps=5, loss=loss)
    killed = dict(full, out=str(tmp_path / "b" / "s1"))
    fit(full, progress_bar=False)
    proc = _run(tmp_path, killed, env={"KILL_AT": "8"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpts = tmp_path / "b" / "s1" / "checkpoints"
    assert (ckpts / "last.ckpt").exists() and not list(ckpts.glob(".*tmp"))
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 10  # lost < one interval
    fit(killed, resume="last", progress_bar=False)
    a = torch.load(tmp_path / "a" / "s1" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 24
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for k in sa["state"]:
            assert torch.equal(sa["state"][k]["exp_avg"], sb["state"][k]["exp_avg"])
    # the log history survives the kill: every logged step once, before and after the resume, with the
    # uninterrupted run's values (the killed run's rows after step 10 were logged again)
    ha, rows_a = read_metrics(tmp_path / "a" / "s1" / "logs" / "metrics.csv")
    hb, rows_b = read_metrics(tmp_path / "b" / "s1" / "logs" / "metrics.csv")
    steps = [int(r["step"]) for r in rows_b]
    assert steps == sorted(set(steps)) == [int(r["step"]) for r in rows_a] and len(steps) == 12
    assert sorted(ha) == sorted(hb)
    for ra, rb in zip(rows_a, rows_b):
        for key in ("step", "rec_loss", "disc_loss"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    assert [p.name for p in (tmp_path / "b" / "s1" / "logs").iterdir()] == ["metrics.csv"]   # no temp, no copy


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_identical(tmp_path):
    data = _images(tmp_path / "data", 8)
    spec = stage1_spec(tmp_path, data, max_steps=4, every_n_steps=4, devices=2, batch_size=2,
                       loss=dict(disc_start=0, disc_ndf=8, disc_num_layers=1))
    dump = textwrap.dedent("""
        import os, sys, json, torch
        from quantart.training import fit
        spec = json.load(open(sys.argv[1]))
        r = fit(spec, progress_bar=False)
        rank = r.module.trainer.global_rank
        params = {k: p.detach() for k, p in r.module.model.named_parameters()}
        torch.save(params, os.path.join(spec["out"], f"rank{rank}.pt"))
    """)
    import json
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "ddp.py").write_text(dump)
    proc = subprocess.run([sys.executable, str(tmp_path / "ddp.py"), str(tmp_path / "spec.json")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "s1" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "s1" / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys() and len(r0) > 10
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert torch.load(tmp_path / "s1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


def test_non_finite_loss_stops_with_the_step(tmp_path, monkeypatch):
    from quantart.losses import VQLPIPSWithDiscriminator
    data = _images(tmp_path / "data", 4)
    original = VQLPIPSWithDiscriminator.forward

    def poisoned(self, codebook_loss, inputs, recon, optimizer_idx, global_step, **kw):
        loss, log = original(self, codebook_loss, inputs, recon, optimizer_idx, global_step, **kw)
        return (loss * float("nan") if global_step == 3 else loss), log

    monkeypatch.setattr(VQLPIPSWithDiscriminator, "forward", poisoned)
    spec = stage1_spec(tmp_path, data, max_steps=6, every_n_steps=2, loss=dict(disc_ndf=8, disc_num_layers=1))
    with pytest.raises(NonFiniteLossError, match="non-finite generator loss at step 3"):
        fit(spec, progress_bar=False)
    last = torch.load(tmp_path / "s1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    r = runner.invoke(train, ["stage1", "--data", str(tmp_path / "empty"), "--preset", "tiny", "--out",
                              str(tmp_path / "o")])
    assert r.exit_code == 2 and "Error:" in r.output and "Traceback" not in r.output
    r = runner.invoke(train, ["stage2", "--content", str(tmp_path), "--style", str(tmp_path), "--preset", "tiny",
                              "--encoder-ckpt", str(tmp_path / "nope.ckpt"), "--decoder-ckpt", str(tmp_path / "n2")])
    assert r.exit_code == 2 and "no such checkpoint" in r.output
    r = runner.invoke(train, ["stage1", "--preset", "tiny"])
    assert r.exit_code == 2 and "no training data" in r.output
    r = runner.invoke(train, ["stage1", "--data", str(tmp_path), "--preset", "tiny", "--size", "30"])
    assert r.exit_code == 2 and "latent stride" in r.output


def test_cli_official_yaml_and_flags(tmp_path):
    import yaml
    data = _images(tmp_path / "data", 4)
    cfg = {"model": {"base_learning_rate": 1e-5, "target": "taming.models.vqgan.VQModel",
                     "params": {"embed_dim": 8, "n_embed": 32, "ddconfig": TINY["ddconfig"],
                                "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                               "params": {"disc_start": 1, "disc_weight": 0.8, "disc_ndf": 8,
                                                          "disc_num_layers": 1, "perceptual_weight": 0.0}}}},
           "data": {"params": {"batch_size": 3, "num_workers": 0,
                               "train": {"target": "ImageFolderDataset", "params": {"root": str(data), "size": 16}}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(train, ["stage1", "--config", str(tmp_path / "c.yaml"), "--max-steps", "2", "--batch-size",
                                   "2", "--out", str(tmp_path / "o"), "--no-progress", "--accelerator", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"model: {tmp_path / 'o' / 'model'}" in r.output
    ckpt = torch.load(tmp_path / "o" / "checkpoints" / "last.ckpt", weights_only=True)
    spec = ckpt["quantart"]["spec"]
    assert spec["batch_size"] == 2 and spec["base_lr"] == 1e-5 and spec["loss"]["disc_start"] == 1
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(2e-5)



def test_cli_init_from_starts_from_those_weights(tmp_path):
    """`--init-from CKPT` is the official ckpt_path: the run starts from those weights, with a fresh step
    count (not a resume); at learning rate 0 the result is exactly the starting model."""
    from quantart.models import build_model

    data = _images(tmp_path / "data", 4)
    torch.manual_seed(3)
    start = build_model({"kind": "stage1", **preset("stage1", "tiny")["model"]})
    quantart.save_model(start, tmp_path / "start")
    r = CliRunner().invoke(train, ["stage1", "--preset", "tiny", "--data", str(data), "--size", "16", "--batch-size",
                                   "2", "--no-progress", "--accelerator", "cpu", "--base-lr", "0", "--max-steps", "1",
                                   "--out", str(tmp_path / "o"), "--init-from", str(tmp_path / "start")])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(tmp_path / "o" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["quantart"]["step"] == 1 and ckpt["quantart"]["spec"]["model"]["ckpt_path"] == str(tmp_path / "start")
    for key, value in start.state_dict().items():
        assert torch.equal(ckpt["state_dict"][key], value), key
    r = CliRunner().invoke(train, ["stage1", "--preset", "tiny", "--data", str(data), "--no-progress",
                                   "--out", str(tmp_path / "o2"), "--init-from", str(tmp_path / "missing.ckpt")])
    assert r.exit_code == 2 and "missing.ckpt: no such checkpoint" in r.output
