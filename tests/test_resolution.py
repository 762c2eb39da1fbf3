"""Progressive resizing: `data.resolution_schedule` phases, their cost under a time budget, and
the switch inside the training loop (workers, resume)."""
import pytest

from engine_helpers import tiny_config
from urbanseg.config import load_config
from urbanseg.engine import run_length as run_length_module
from urbanseg.engine import train as train_module
from urbanseg.engine.checkpoint import load_checkpoint
from urbanseg.engine.resolution import ResolutionSchedule
from urbanseg.engine.run_length import RunLength
from urbanseg.errors import ConfigError

LATE_LARGE = "data.resolution_schedule=[{start: 0.8, resize: [128, 256], crop: [64, 128]}]"


def test_phases_by_fraction_of_the_steps_and_their_cost_in_pixels():
    cfg = load_config(None, ["data.crop=[32, 64]", LATE_LARGE]).data
    schedule = ResolutionSchedule(cfg)
    assert schedule.costs == [1.0, 4.0]  # 64x128 crops against 32x64
    assert [schedule.phase(step, 100) for step in (0, 79, 80, 99)] == [0, 0, 1, 1]
    later = schedule.data_config(1)
    assert (later.resize, later.crop, later.scale) == ([128, 256], [64, 128], cfg.scale)
    assert schedule.data_config(0) is cfg
    assert schedule.units(0, 100, 100) == 80 + 4 * 20
    assert schedule.units(70, 90, 100) == 10 + 4 * 10
    assert schedule.units(0, 50, 100) == 50  # the first phase only
    plain = ResolutionSchedule(load_config(None, []).data)
    assert len(plain) == 1 and plain.units(3, 10, 100) == 7


@pytest.mark.parametrize("value, message", [
    ("[{start: 1.5, crop: [64, 128]}]", r"data.resolution_schedule\[0\].start: expected a fraction"),
    ("[{crop: [64, 128]}]", r"data.resolution_schedule\[0\].start: expected a fraction"),
    ("[{start: 0.6, crop: [64, 128]}, {start: 0.5, crop: [64, 128]}]", r"resolution_schedule\[1\].start"),
    ("[{start: 0.5}]", r"data.resolution_schedule\[0\]: expected a resize or a crop"),
    ("[{start: 0.5, crop: [64]}]", r"data.resolution_schedule\[0\].crop: expected \[height, width\]"),
    ("[{start: 0.5, size: [64, 128]}]", r"data.resolution_schedule\[0\].size: unknown key"),
])
def test_a_bad_phase_names_its_key(value, message):
    with pytest.raises(ConfigError, match=message):
        ResolutionSchedule(load_config(None, [f"data.resolution_schedule={value}"]).data)


def test_a_budget_fits_the_dearer_phase_in_its_minutes(monkeypatch):
    """100 s of budget; steps take 1 s, 4 s in the last fifth of the run. Fitted in cost units, the
    run ends on its budget; fitted in plain steps, it would plan 95 steps and take 157 s."""
    clock = [0.0]
    monkeypatch.setattr(run_length_module, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    schedule = ResolutionSchedule(load_config(None, ["data.crop=[32, 64]", LATE_LARGE]).data)
    length = RunLength(planned_steps=1000, max_minutes=100 / 60, units=schedule.units)
    step, large_steps = 0, 0
    while step < length.total_steps:
        phase = schedule.phase(step, length.total_steps)
        large_steps += phase
        clock[0] += 2.0 if step < 5 else schedule.costs[phase]  # the warm-up is slow and not timed
        step += 1
        length.refit(step)
        if step == 25:  # 30 s used at 1 s per unit: 70 units left, = 1.6 N - 25 for a run of N steps
            assert length.total_steps == 59
    assert 96 <= clock[0] <= 100
    assert large_steps == step - round(0.8 * step)


def _record_batch_sizes(monkeypatch) -> list:
    seen = []
    original = train_module.train_step

    def recording(s, micro_batches):
        seen.append(tuple(micro_batches[0][0].shape[-2:]))
        return original(s, micro_batches)
    monkeypatch.setattr(train_module, "train_step", recording)
    return seen


@pytest.mark.parametrize("workers", [0, 1])
def test_the_loop_switches_resolution_mid_epoch(cityscapes_root, tmp_path, monkeypatch, workers):
    # 8 images, batch 4: 2 steps an epoch; the phase starts at step 3 of 8, inside the second epoch
    seen = _record_batch_sizes(monkeypatch)
    cfg = tiny_config(cityscapes_root, "data.crop=[32, 64]", f"data.workers={workers}", "trainer.max_steps=8",
                      "trainer.eval_every=100", "trainer.sample_images=0",
                      "data.resolution_schedule=[{start: 0.375, crop: [64, 128]}]")
    result = train_module.train(cfg, tmp_path / "run")
    assert seen == [(32, 64)] * 3 + [(64, 128)] * 5
    assert result["step"] == 8 and result["epoch"] == 4  # the epochs kept their length across the switch


def test_a_resumed_run_continues_in_its_phase(cityscapes_root, tmp_path, monkeypatch):
    seen = _record_batch_sizes(monkeypatch)
    cfg = tiny_config(cityscapes_root, "data.crop=[32, 64]", "trainer.max_steps=8", "trainer.eval_every=6",
                      "trainer.sample_images=0", "data.resolution_schedule=[{start: 0.5, crop: [64, 128]}]")

    def stop_at_six(step, metrics):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_module.train(cfg, tmp_path / "run", on_evaluation=stop_at_six)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").training["progress"]["step"] == 6
    seen.clear()
    train_module.train(cfg, tmp_path / "run", resume=True)
    assert seen == [(64, 128)] * 2
