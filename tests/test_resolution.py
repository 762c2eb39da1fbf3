"""Progressive resizing: `data.resolution_schedule` phases, their cost under a time budget, and
the switch inside the training loop (workers, resume)."""
import pytest

from engine_helpers import SetClock, tiny_config
from urbanseg.config import load_config
from urbanseg.engine import run_length as run_length_module
from urbanseg.engine import train as train_module
from urbanseg.engine.checkpoint import load_checkpoint, resume_config
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


def _train_on_a_clock(monkeypatch, schedule: ResolutionSchedule, seconds_per_step: list, budget: float,
                      check=None) -> tuple[list, float]:
    """The loop's phase and run-length bookkeeping on a fake clock, each step taking its phase's
    seconds (the first five 2 s, untimed warm-up); returns each step's phase and the seconds used."""
    clock = SetClock()
    monkeypatch.setattr(run_length_module, "time", clock)
    length = RunLength(planned_steps=10_000, max_minutes=budget / 60, units=schedule.units)
    phases = []
    while len(phases) < length.total_steps:
        phase = schedule.follow(len(phases), length.total_steps)
        if phases and phase != phases[-1]:
            length.new_phase(len(phases))
        phases.append(phase)
        clock.now += 2.0 if len(phases) <= 5 else seconds_per_step[phase]
        length.refit(len(phases))
        if check:
            check(len(phases), length)
    return phases, clock.now


def test_a_budget_fits_the_dearer_phase_in_its_minutes(monkeypatch):
    """100 s of budget; steps take 1 s, 4 s in the last fifth of the run. Fitted in cost units, the
    run ends on its budget; fitted in plain steps, it would plan 95 steps and take 157 s."""
    def after_25(step, length):
        if step == 25:  # 30 s used at 1 s per unit: 70 units left, = 1.6 N - 25 for a run of N steps
            assert length.total_steps == 59
    schedule = ResolutionSchedule(load_config(None, ["data.crop=[32, 64]", LATE_LARGE]).data)
    phases, seconds = _train_on_a_clock(monkeypatch, schedule, [1.0, 4.0], 100, after_25)
    assert 96 <= seconds <= 100
    assert len(phases) == 59 and phases.index(1) == round(0.8 * 59)


@pytest.mark.parametrize("seconds_per_large_step", [2.0, 6.0])
def test_a_phase_dearer_or_cheaper_than_its_pixels_never_sends_the_run_back(monkeypatch, seconds_per_large_step):
    """Its pixels say a 64x128 step costs 4 of 32x64; really 2 (or 6). Timed after the switch, the
    run is refitted longer, which would put the phase's fraction after the step it began at (or
    shorter, which would overrun the budget until the next regular refit): the run stays in the
    phase it entered, fitted to the real price, and ends on its budget."""
    schedule = ResolutionSchedule(load_config(None, ["data.crop=[32, 64]",
                                                     "data.resolution_schedule=[{start: 0.5, crop: [64, 128]}]"]).data)
    phases, seconds = _train_on_a_clock(monkeypatch, schedule, [1.0, seconds_per_large_step], 400)
    switch = phases.index(1)
    assert phases == [0] * switch + [1] * (len(phases) - switch)  # one switch, never back
    assert schedule.entered == [0, switch]
    assert 400 - 2 * seconds_per_large_step <= seconds <= 400
    # fitted at step 25 (30 s used) at 1 s and 4 s a step: 2.5 N - 25 = 370, N = 158, the switch
    # at 79 (84 s used); the large steps then fill what is left at their real price
    assert switch == 79 and abs(len(phases) - switch - 316 / seconds_per_large_step) <= 1


def test_three_phases_one_of_them_skipped():
    cfg = load_config(None, ["data.crop=[32, 64]", "data.resolution_schedule=[{start: 0.5, crop: [32, 128]}, "
                                                   "{start: 0.6, crop: [64, 128]}]"]).data
    schedule = ResolutionSchedule(cfg)
    assert schedule.costs == [1.0, 2.0, 4.0]
    assert schedule.follow(40, 100) == 0
    assert schedule.follow(45, 70) == 2  # the run was refitted shorter: past both starts at once
    assert schedule.entered == [0, 45, 45] and schedule.first_steps(200) == [0, 45, 45]
    assert schedule.units(40, 50, 70) == 5 + 4 * 5  # the skipped phase has no steps


def test_the_phases_entered_stay_when_the_run_grows_and_after_a_resume():
    cfg = load_config(None, ["data.crop=[32, 64]", LATE_LARGE]).data
    schedule = ResolutionSchedule(cfg)
    assert [schedule.follow(step, 100) for step in (79, 80)] == [0, 1]
    assert schedule.phase(85, 200) == 1  # at 200 steps the phase would begin at 160: it began at 80
    assert schedule.units(0, 200, 200) == 80 + 4 * 120
    assert schedule.units(70, 90, 300) == 10 + 4 * 10  # the steps done are counted as they were
    resumed = ResolutionSchedule(cfg)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.phase(85, 200) == 1 and resumed.first_steps(200) == [0, 80]
    older = ResolutionSchedule(cfg)
    older.load_state_dict({})  # a checkpoint from before the phases were kept: by fraction, as then
    assert older.phase(85, 200) == 0 and older.first_steps(200) == [0, 160]
    fewer = ResolutionSchedule(load_config(None, ["data.crop=[32, 64]"]).data)
    fewer.load_state_dict(schedule.state_dict())  # resumed with the schedule taken out
    assert fewer.entered == [0] and fewer.phase(85, 200) == 0


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
    training = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").training
    assert training["progress"]["step"] == 6 and training["resolution"] == {"entered": [0, 4]}
    seen.clear()
    train_module.train(cfg, tmp_path / "run", resume=True)
    assert seen == [(64, 128)] * 2
    # made longer, it stays in the phase it entered at step 4 (by fraction, the phase would begin at 8)
    seen.clear()
    longer = resume_config(tmp_path / "run", ["trainer.max_steps=16"])
    train_module.train(longer, tmp_path / "run", resume=True)
    assert seen == [(64, 128)] * 8
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").training["resolution"] == {"entered": [0, 4]}
