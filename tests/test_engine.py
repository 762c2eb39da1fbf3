import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine_helpers import SetClock, TickClock, run_cli, tiny_config, tiny_overrides
from urbanseg.cli import main
from urbanseg.engine import run_length as run_length_module
from urbanseg.engine import state as state_module
from urbanseg.engine.checkpoint import load_checkpoint
from urbanseg.engine.run_length import RunLength
from urbanseg.engine.train import train


def _rows(run_dir, split=None):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [r for r in csv.DictReader(handle) if split is None or r["split"] == split]


def test_a_few_steps_reduce_the_loss_and_fill_the_run_dir(cityscapes_root, tmp_path):
    cfg = tiny_config(cityscapes_root, "trainer.max_steps=24", "trainer.eval_every=12")
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    losses = [float(r["loss"]) for r in _rows(run, "train")]
    assert [int(r["step"]) for r in _rows(run, "train")] == list(range(1, 25))
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    val = _rows(run, "val")
    assert [int(r["step"]) for r in val] == [12, 24] and float(val[1]["loss"]) < float(val[0]["loss"])
    assert result["step"] == 24 and 0 <= result["metrics"]["miou"] <= 1
    assert (run / "config.yaml").exists() and any((run / "tensorboard").iterdir())
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state.training["progress"]["step"] == 24 and state.labels.class_names[0] == "road"
    assert set(state.training) >= {"optimizer", "schedule", "scaler", "progress", "run_length", "rng", "precision"}
    assert state.model and state.ema is None and state.config["trainer"]["max_steps"] == 24
    assert load_checkpoint(run / "checkpoints" / "best.pt").training["progress"]["step"] in (12, 24)


def test_bf16_training_lowers_the_loss_like_fp32(cityscapes_root, tmp_path):
    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(cityscapes_root, "trainer.max_steps=20", f"trainer.precision={precision}",
                          "trainer.channels_last=true")
        train(cfg, tmp_path / precision)
        losses = [float(r["loss"]) for r in _rows(tmp_path / precision, "train")]
        assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), precision
        finals[precision] = sum(losses[-4:]) / 4
        assert load_checkpoint(tmp_path / precision / "checkpoints" / "last.pt").training["precision"] == precision
    assert abs(finals["bf16"] - finals["fp32"]) < 0.25 * finals["fp32"]


def test_epochs_accumulation_clipping_and_ema(cityscapes_root, tmp_path):
    cfg = tiny_config(cityscapes_root, "data.batch_size=2", "trainer.max_epochs=2", "trainer.accumulate=2",
                      "trainer.clip_grad_norm=1.0", "trainer.ema_decay=0.9", "loss.terms={ce: 1.0, dice: 1.0}",
                      "loss.class_weights=auto", "schedule.name=poly", "schedule.warmup=1")
    result = train(cfg, tmp_path / "run")
    # 8 images / batch 2 = 4 micro-batches = 2 optimizer steps per epoch; one evaluation per epoch
    assert result["step"] == 4 and result["epoch"] == 2
    assert [int(r["step"]) for r in _rows(tmp_path / "run", "val")] == [2, 4]
    weights = (tmp_path / "run" / "class_weights.json").read_text()
    assert '"method": "auto"' in weights
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state.ema is not None and state.ema.keys() == state.model.keys()  # no prefix to strip
    assert state.training["ema_updates"] == 4


def test_early_stopping_when_the_monitor_stalls(cityscapes_root, tmp_path):
    cfg = tiny_config(cityscapes_root, "optim.lr=0.0", "trainer.max_steps=40", "trainer.eval_every=2",
                      "trainer.early_stopping=2", "trainer.sample_images=0")
    result = train(cfg, tmp_path / "run")
    assert result["step"] == 6  # best at step 2, no improvement at 4 and 6
    assert not (tmp_path / "run" / "samples").exists()  # sample_images: 0 draws no grids


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(cityscapes_root, tmp_path,
                                                                             monkeypatch, capsys):
    real_build_loss = state_module.build_loss

    def poisoned(*args, **kwargs):
        loss = real_build_loss(*args, **kwargs)
        calls = {"n": 0}

        def forward(logits, target):
            calls["n"] += torch.is_grad_enabled()  # count training steps, not validation batches
            value = loss(logits, target)
            return value * float("nan") if calls["n"] == 5 else value

        return forward

    monkeypatch.setattr(state_module, "build_loss", lambda *a, **k: _Wrapped(poisoned(*a, **k)))
    run = tmp_path / "run"
    code = main(["train", *tiny_overrides(cityscapes_root, "trainer.max_steps=10", "trainer.save_every=2"),
                 "--run-dir", str(run)])
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at step 5; stopped" in err and str(run / "checkpoints" / "last.pt") in err
    assert load_checkpoint(run / "checkpoints" / "last.pt").training["progress"]["step"] == 4


class _Wrapped(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, target):
        return self.fn(logits, target)


def test_existing_run_is_not_overwritten_and_bad_keys_fail(cityscapes_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *tiny_overrides(cityscapes_root, "trainer.max_steps=2"), "--run-dir", str(run)]) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", *tiny_overrides(cityscapes_root, "trainer.max_steps=2"), "--run-dir", str(run)]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert main(["train", "trainer.max_step=3", "--run-dir", str(tmp_path / "x")]) == 2
    assert "trainer.max_step: unknown key" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train", *tiny_overrides(cityscapes_root, "trainer.max_steps=2", "trainer.sync_batchnorm=true"),
                 "--run-dir", str(tmp_path / "y")]) == 0
    assert "trainer.sync_batchnorm: a single process has nothing to synchronise" in capsys.readouterr().out
    assert main(["train", *tiny_overrides(cityscapes_root, "trainer.sample_images=-1"),
                 "--run-dir", str(tmp_path / "z")]) == 2
    assert "trainer.sample_images: expected 0 (no sample grids) or more, got -1" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()  # checked before anything is written


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_same_step_and_weights(cityscapes_root, tmp_path):
    args = tiny_overrides(cityscapes_root, "trainer.max_steps=40", "trainer.save_every=3", "trainer.eval_every=20",
                          "model.options={base_channels: 8}")
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "urbanseg", "train", *args, "--run-dir", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (killed / "metrics.csv").exists() and len(_rows(killed, "train")) >= 8:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(_rows(killed, "train")) < 40, "the run finished before it could be killed"
    resumed = run_cli("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    steps = [int(r["step"]) for r in _rows(killed, "train")]
    assert steps == list(range(1, 41))
    assert [int(r["step"]) for r in _rows(killed, "val")] == [20, 40]

    straight = run_cli("train", *args, "--run-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    a = load_checkpoint(killed / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert a.training["progress"]["step"] == b.training["progress"]["step"] == 40
    for key in b.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_count_every_validation_image_once(cityscapes_root, tmp_path):
    import json

    from urbanseg.engine.checkpoint import load_model, resume_config
    from urbanseg.engine.data import ShardedSampler, build_train_val, make_loader
    from urbanseg.engine.evaluate import validate
    from urbanseg.engine.precision import pick_precision
    from urbanseg.losses import build_loss

    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "urbanseg", "train", *tiny_overrides(cityscapes_root, "trainer.max_steps=3"), "--run-dir", str(run)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    distributed = json.loads((run / "val_metrics.json").read_text())
    assert distributed["images"] == 5  # 5 validation images over 2 ranks: none padded, none twice

    cfg = resume_config(run)
    _, val_set = build_train_val(cfg.data)
    model = load_model(run / "checkpoints" / "last.pt").model
    loader = make_loader(val_set, ShardedSampler(len(val_set), shuffle=False, pad=False), 2, 0, False)
    single = validate(model, loader, build_loss(cfg.loss), val_set.labels, torch.device("cpu"),
                      pick_precision("fp32", torch.device("cpu")))
    assert single["images"] == 5
    assert single["confusion_matrix"] == distributed["confusion_matrix"]


def test_time_budget_shortens_the_run_and_still_anneals(cityscapes_root, tmp_path, monkeypatch):
    monkeypatch.setattr(run_length_module, "time", TickClock(0.05))  # 3 s of budget: about 60 steps
    cfg = tiny_config(cityscapes_root, "trainer.max_steps=100000", "trainer.max_minutes=0.05", "schedule.name=poly",
                      "trainer.eval_every=1000000")
    result = train(cfg, tmp_path / "run")
    assert 25 <= result["step"] < 100
    rates = [float(row["lr"]) for row in _rows(tmp_path / "run", "train")]  # one row a step
    fit = RunLength.warmup_steps + RunLength.timed_steps  # the first fit, after step 25
    assert all(later < earlier for earlier, later in zip(rates[fit - 1:], rates[fit:]))
    left = result["step"] - fit  # poly from where it was to zero at the fitted end
    assert rates[-1] == pytest.approx(rates[fit - 1] * (1 / left) ** 0.9, rel=1e-3)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state.training["run_length"]["fitted_steps"] == result["step"]
    again = train(cfg, tmp_path / "run", resume=True)  # the fitted length survives a resume
    assert again["step"] == result["step"]


def test_time_budget_refits_to_the_pace_both_ways(monkeypatch):
    clock = SetClock()
    monkeypatch.setattr(run_length_module, "time", clock)
    length = RunLength(planned_steps=1000, max_minutes=100 / 60, start_step=0)  # 100 s
    fits = {}

    def run(steps, seconds_per_step):
        for _ in range(steps):
            clock.now += seconds_per_step
            step = run.step = run.step + 1
            fitted = length.refit(step)
            if fitted is not None:
                fits[step] = fitted
                assert length.total_steps == fitted
    run.step = 0
    run(5, 2.0)  # warm-up, slow, not timed
    run(20, 1.0)  # step 25: 30 s used, 1 s/step -> 70 more steps
    assert fits == {25: 95}
    run(25, 0.5)  # step 50: 42.5 s used (< half), 0.5 s/step -> may grow
    assert fits[50] == 50 + int(57.5 / 0.5)
    run(50, 0.25)  # step 100: 55 s used (> half): faster steps still lengthen the run
    assert fits[100] > fits[50]
    run(50, 1.0)  # step 150: 105 s used, slower: shortened to stop now
    assert fits[150] == 150


def test_a_run_at_its_fitted_end_is_not_lengthened(monkeypatch):
    """Steps that get faster just before the fitted end would lengthen the run, but its learning
    rate has decayed to the end there: the run stops rather than add steps at the floor rate."""
    clock = SetClock()
    monkeypatch.setattr(run_length_module, "time", clock)
    length = RunLength(planned_steps=1000, max_minutes=100 / 60)  # 100 s
    fits = {}
    for step in range(1, 101):
        clock.now += 1.0 if step <= 75 else 0.5
        if (fitted := length.refit(step)) is not None:
            fits[step] = fitted
    assert fits == {25: 100, 50: 100}  # 1 s a step: the 100 s hold 100 steps
    # at step 100, 12.5 s left at 0.75 s a step (steps 50-100) would give 116: not refitted
    assert length.total_steps == 100


@pytest.mark.parametrize("pace, steps", [
    (lambda step: 1.2 if (step // 50) % 2 else 0.8, (1990, 2010)),  # a shared machine's minutes
    (lambda step: 1.0 if step < 800 else 0.85, (2200, 2215)),  # the machine speeds up after 40%
])
def test_time_budget_is_spent_when_the_pace_varies(monkeypatch, pace, steps):
    """Blocks of 50 steps alternately 20% slower and 20% faster than 1 s, or steps 15% faster from
    the budget's second half on: timed over the latest 10% of the budget and refitted both ways
    to the end, the run spends its 2000 s and does not overrun. (Timed over 50 steps and only
    shortened in its second half it spent 1826 and 1964 s; over 10%, so shortened, 1953 and 1964.)"""
    clock = SetClock()
    monkeypatch.setattr(run_length_module, "time", clock)
    length = RunLength(planned_steps=100_000, max_minutes=2000 / 60)
    step = 0
    while step < length.total_steps:
        clock.now += pace(step)
        step += 1
        length.refit(step)
    assert 1990 <= clock.now <= 2010 and steps[0] <= step <= steps[1]
