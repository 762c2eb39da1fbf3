import copy
import math

import pytest
import torch

from urbanseg.config import OptimConfig, ScheduleConfig
from urbanseg.optim import build_optimizer, parameter_groups
from urbanseg.schedules import LRSchedule


def lr_at(steps, total=100, base=0.1, per_epoch=1, **kw):
    schedule = LRSchedule(ScheduleConfig(**kw), base, total, per_epoch)
    return [schedule.lr(s) for s in steps]


def test_poly_and_cosine_with_linear_warmup():
    assert lr_at([0, 4, 9], name="poly", warmup=10) == pytest.approx([0.01, 0.05, 0.1])
    # after warmup: base * (1 - t/T)^0.9 with t = step - warmup, T = total - warmup
    assert lr_at([10, 55, 100], name="poly", warmup=10) == pytest.approx([0.1, 0.1 * 0.5**0.9, 0.0])
    assert lr_at([0, 50, 100], name="cosine", min_lr=0.001) == pytest.approx(
        [0.1, 0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi / 2)), 0.001])


@pytest.mark.parametrize("name", ["poly", "cosine"])
def test_a_refitted_run_decays_on_from_where_it_is(name):
    """A time budget refits the run's length midway: the lr goes on from its value to the new end,
    never up when the run lengthens; refitted to the same length, it is the closed form."""
    closed = LRSchedule(ScheduleConfig(name=name, warmup=10), 0.1, 100)
    same, rates = LRSchedule(ScheduleConfig(name=name, warmup=10), 0.1, 100), []
    for step in range(101):  # as training calls it: refitted after some steps, the lr of the next
        if step in (5, 30, 60):
            same.refit(100, step)
        rates.append(same.lr(step))
    assert rates == pytest.approx([closed.lr(s) for s in range(101)], abs=1e-12)

    for new_total in (160, 70):  # longer, shorter
        schedule = LRSchedule(ScheduleConfig(name=name, warmup=10), 0.1, 100)
        schedule.refit(new_total, 60)
        rates = [schedule.lr(s) for s in range(60, new_total + 1)]
        assert rates[0] == pytest.approx(closed.lr(60))  # the step after the refit: as before it
        assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))
        assert rates[-1] == pytest.approx(0.0, abs=1e-12) and rates[-2] > 0  # decayed exactly at the new end
    # progress is linear from the refit to the end: halfway there, halfway from where it was to 1
    assert schedule.progress(65) == pytest.approx(closed.progress(60) + (1 - closed.progress(60)) / 2)

    resumed = LRSchedule(ScheduleConfig(name=name, warmup=10), 0.1, 70)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.lr(65) == schedule.lr(65)
    old = {key: value for key, value in schedule.state_dict().items() if key != "anchor"}
    from_old = LRSchedule(ScheduleConfig(name=name, warmup=10), 0.1, 70)
    from_old.load_state_dict(old)  # a checkpoint from before refits were anchored: the closed form
    assert from_old.anchor is None
    assert from_old.lr(40) == LRSchedule(ScheduleConfig(name=name, warmup=10), 0.1, 70).lr(40)


def test_a_schedule_never_refitted_resumes_with_its_own_warmup():
    """Only a refit pins where decay goes on from: a run resumed with another warmup (or `unit:
    epoch` with another epoch length) follows its own config, not the saved run's warmup."""
    saved = LRSchedule(ScheduleConfig(name="poly", warmup=100), 0.1, 1000)
    resumed = LRSchedule(ScheduleConfig(name="poly", warmup=0), 0.1, 1000)
    resumed.load_state_dict(saved.state_dict())
    fresh = LRSchedule(ScheduleConfig(name="poly", warmup=0), 0.1, 1000)
    assert [resumed.lr(s) for s in (50, 500)] == [fresh.lr(s) for s in (50, 500)]
    assert resumed.lr(50) < 0.1  # decaying, not held at the base rate until step 100


def test_step_multistep_in_epochs():
    # StepLR(20 epochs, 0.1) with 5 steps per epoch: drops at steps 100 and 200
    assert lr_at([99, 100, 200], total=300, per_epoch=5, name="step", unit="epoch", step_size=20) == pytest.approx(
        [0.1, 0.01, 0.001])
    assert lr_at([29, 30, 80], name="multistep", milestones=[30, 80], gamma=0.5) == pytest.approx([0.1, 0.05, 0.025])


def test_quadratic_warmup_then_inverse_sqrt_with_floor():
    kw = dict(name="inverse_sqrt", warmup=100, warmup_shape="quadratic", min_lr=0.005)
    assert lr_at([0, 49, 99], total=10_000, **kw) == pytest.approx([0.1 * 0.01**2, 0.1 * 0.25, 0.1])
    assert lr_at([399, 9999], total=10_000, **kw) == pytest.approx([0.1 * math.sqrt(100 / 400), 0.01])
    assert lr_at([10**6], total=10**7, **kw) == pytest.approx([0.005])  # the floor


def test_plateau_drops_after_patience():
    schedule = LRSchedule(ScheduleConfig(name="plateau", patience=1, gamma=0.5), 0.1, 100)
    for value in (0.5, 0.6, 0.6, 0.55):  # best 0.6, then two evaluations without improvement
        schedule.observe(value, higher_is_better=True)
    assert schedule.lr(50) == pytest.approx(0.05)
    restored = LRSchedule(ScheduleConfig(name="plateau", patience=1, gamma=0.5), 0.1, 100)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr(50) == pytest.approx(0.05)


def test_schedule_errors_name_the_key():
    with pytest.raises(ValueError, match="schedule.name: unknown schedule 'exp'"):
        LRSchedule(ScheduleConfig(name="exp"), 0.1, 10)
    with pytest.raises(ValueError, match="schedule.warmup_shape"):
        LRSchedule(ScheduleConfig(warmup_shape="cubic"), 0.1, 10)


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1, bias=False))
    decay, no_decay = parameter_groups(model, 0.01)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert no_decay["weight_decay"] == 0.0
    sgd = build_optimizer(OptimConfig(name="sgd", lr=0.2, momentum=0.9, nesterov=True), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    assert isinstance(build_optimizer(OptimConfig(name="adam"), model), torch.optim.Adam)
    with pytest.raises(ValueError, match="optim.name: unknown optimizer 'lamb'"):
        build_optimizer(OptimConfig(name="lamb"), model)


@pytest.mark.parametrize("name, reference", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_uses_the_fused_kernel_on_cpu_with_the_same_steps(name, reference):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 1))
    twin = copy.deepcopy(model)
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.05)
    fused = build_optimizer(cfg, model)
    assert all(group["fused"] for group in fused.param_groups)
    plain = reference(parameter_groups(twin, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))  # for-each
    x = torch.randn(2, 3, 8, 8)
    for _ in range(5):
        for net, optimizer in ((model, fused), (twin, plain)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    for got, expected in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
