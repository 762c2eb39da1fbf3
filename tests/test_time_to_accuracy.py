"""Time to accuracy: every metrics.csv row carries the seconds trained so far (net of evaluation,
summed over resumes), a time budget spaces its evaluations in time at a bounded cost, and the
curves plot validation mIoU against minutes."""
import csv

import pytest

from engine_helpers import SetClock, TickClock, tiny_config
from urbanseg.engine import run_length as run_length_module
from urbanseg.engine.checkpoint import load_checkpoint
from urbanseg.engine.run_length import RunLength
from urbanseg.engine.train import train
from urbanseg.visualize import minutes_curve, plot_curves, read_curves


def _rows(run_dir, split=None):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [r for r in csv.DictReader(handle) if split is None or r["split"] == split]


def test_trained_seconds_exclude_pauses_and_carry_over_a_resume(monkeypatch):
    clock = SetClock()
    monkeypatch.setattr(run_length_module, "time", clock)
    length = RunLength(planned_steps=100)
    clock.now = 10.0
    with length.paused():
        clock.now = 14.0
        assert length.trained_seconds() == 10.0  # frozen while evaluating
    clock.now = 15.0
    assert length.trained_seconds() == 11.0  # 15 s less the 4 s evaluation
    resumed = RunLength(planned_steps=100, **length.state_dict())
    clock.now = 18.0
    assert resumed.trained_seconds() == 14.0  # 11 before the resume + 3 since


def test_a_budget_spaces_evaluations_in_time_and_bounds_their_cost(monkeypatch):
    clock = SetClock()
    monkeypatch.setattr(run_length_module, "time", clock)
    length = RunLength(planned_steps=100_000, max_minutes=10)  # 600 s: a curve point every 20 s
    due = []

    def run(steps: int, seconds_per_step: float, eval_seconds: float) -> None:
        for _ in range(steps):
            clock.now += seconds_per_step
            run.step += 1
            if length.time_spaced_evaluation_due(run.step):
                due.append(run.step)
                with length.paused():
                    clock.now += eval_seconds
                length.evaluated(run.step)
    run.step = 0
    run(100, 0.5, eval_seconds=0.4)  # cheap evaluations: every 20 s of training = 40 steps
    assert due == [40, 80]
    run(399, 0.5, eval_seconds=2.0)  # at 2 s each, 5% of the time means 38 s apart = 76 steps
    assert due[2:] == [120, 196, 272, 348, 424]
    evaluating = 0.4 * 2 + 2.0 * 5
    assert evaluating / (length.trained_seconds() + evaluating) <= 0.05 + 1e-9
    no_budget = RunLength(planned_steps=100)
    no_budget.evaluated(10)
    assert no_budget.next_eval_step is None


def test_every_row_logs_its_training_seconds_and_a_budget_draws_a_curve(cityscapes_root, tmp_path, monkeypatch):
    # a budget without eval_every: the run evaluates along the way, not only at the end
    monkeypatch.setattr(run_length_module, "time", TickClock(0.05))
    cfg = tiny_config(cityscapes_root, "trainer.max_steps=100000", "trainer.max_minutes=0.05",
                      "trainer.sample_images=0", "trainer.log_every=5")
    result = train(cfg, tmp_path / "run")
    train_rows, val_rows = _rows(tmp_path / "run", "train"), _rows(tmp_path / "run", "val")
    assert len(val_rows) >= 3 and int(val_rows[0]["step"]) < result["step"]
    seconds = [float(r["train_seconds"]) for r in _rows(tmp_path / "run")]
    assert all(s > 0 for s in seconds) and seconds == sorted(seconds)
    assert float(train_rows[-1]["train_seconds"]) <= 0.05 * 60 * 1.2  # net of evaluation: about the budget
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").training["run_length"]
    assert saved["trained_seconds"] >= float(val_rows[-1]["train_seconds"])

    curves = read_curves(tmp_path / "run" / "metrics.csv")
    points = minutes_curve(curves["val"], "miou")
    assert [round(m * 60, 3) for m, _ in points] == [round(float(r["train_seconds"]), 3) for r in val_rows]
    assert [v for _, v in points] == [pytest.approx(float(r["miou"])) for r in val_rows]
    out = plot_curves(tmp_path / "run" / "metrics.csv", tmp_path / "curves.png")
    assert out.stat().st_size > 0


def test_a_resumed_run_continues_the_clock(cityscapes_root, tmp_path):
    cfg = tiny_config(cityscapes_root, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.sample_images=0")
    train(cfg, tmp_path / "run")
    before = float(_rows(tmp_path / "run", "val")[-1]["train_seconds"])
    cfg.trainer.max_steps = 6
    train(cfg, tmp_path / "run", resume=True)
    after = [float(r["train_seconds"]) for r in _rows(tmp_path / "run", "val")]
    assert len(after) == 3 and after[-1] > before == after[1]


def test_runs_logged_before_train_seconds_plot_as_before(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,epoch,split,loss,miou\n1,0,train,1.0,\n2,0,val,0.9,0.3\n")
    assert minutes_curve(read_curves(tmp_path / "metrics.csv")["val"], "miou") == []
    assert plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png").stat().st_size > 0
