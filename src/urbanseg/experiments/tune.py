"""`urbanseg tune`: hyperparameter search with Optuna (TPE), built on `engine.train.train`.

    urbanseg tune --config FILE --space SPACE.yaml --trials 20 [--pruner median|hyperband|none]

Each trial is an ordinary run directory (`<study dir>/trial-<number>/`) trained by `train` with
the trial's values set on the base config. The training loop's `on_evaluation` hook reports the
monitored metric after every evaluation, so the pruner stops poor trials early; a trial's value
is the best one it reported (what its best.pt holds).

The study lives in an Optuna storage: by default a journal file in the study folder, else
`--storage` (a journal file, or a database URL for several machines). Running the command again
with the same storage and study continues it; several processes may run it at once. `--trials N`
is the number of finished trials (complete or pruned) the study should end with, whoever ran them:
a process starts no trial once the finished and running ones make N. A trial stopped by Ctrl-C is
marked failed by Optuna and is not counted; the next run starts a new trial (Optuna trials cannot
be reopened), the interrupted one's run directory stays as it was. Outputs (`best.yaml`,
`trials.csv`, figures: see `study_outputs`) are rewritten after every trial.
"""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from ..config import Config
from ..engine.state import MONITORS
from ..engine.train import train
from ..errors import ConfigError, TrainingError, UrbansegError
from .space import SearchSpace, check_space, config_with, overrides_text, suggest
from .study_outputs import best_trial, write_study_outputs

PRUNERS = ("median", "hyperband", "none")
JOURNAL_NAME = "journal.log"  # the default storage, in the study folder


@dataclass
class TuneResult:
    study_dir: Path
    finished: int  # complete + pruned trials in the study
    best_value: Optional[float]
    best_trial: Optional[int]
    outputs: list[Path]
    notes: list[str]  # outputs not written yet, and why (e.g. importances need 2 complete trials)


class _StudyFull(Exception):
    """Raised in a trial that would go beyond --trials (another process asked at the same moment)."""


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError('tune: needs Optuna; install it with pip install "urbanseg[tune]"') from None
    return optuna


def tune(base: Config, space: SearchSpace, trials: int, study_dir: str | Path, study_name: str,
         storage: Optional[str] = None, pruner: str = "median", metric: Optional[str] = None,
         seed: Optional[int] = None) -> TuneResult:
    """Run (or continue) the study until it holds `trials` finished trials; returns where it stands.

    Everything is checked before the first trial: the metric, the pruner, the space against `base`.
    """
    metric = metric or base.trainer.monitor
    if metric not in MONITORS:
        raise ConfigError(f"--metric: expected one of {', '.join(MONITORS)}, got '{metric}'")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner: expected one of {', '.join(PRUNERS)}, got '{pruner}'")
    if trials < 1:
        raise ConfigError(f"--trials: expected at least 1, got {trials}")
    base = replace(base, trainer=replace(base.trainer, monitor=metric))  # best.pt and early stopping follow it
    check_space(space, base)
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is printed here instead
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage, study_dir)
    study = _open_study(optuna, study_name, storage, metric, pruner, space)
    fail_stale_trials(optuna, study, storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    already = len(study.get_trials(deepcopy=False, states=states))
    running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    # a resumed study must not replay its first random samples, nor a second process the first one's
    sampler_seed = (base.trainer.seed if seed is None else seed) + len(study.trials) + (os.getpid() if running else 0)
    # constant liar: a trial running elsewhere counts as a poor one, so processes spread out
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)
    if already + running < trials:
        print(f"study '{study_name}': {already} of {trials} trials finished, {running} running elsewhere; "
              f"trials in {study_dir}")
        objective = _Objective(optuna, base, space, metric, study_dir, trials)
        # counting running trials stops this process from starting one that another process's will fill
        enough = optuna.study.MaxTrialsCallback(trials, states=(*states, optuna.trial.TrialState.RUNNING))
        try:
            # a diverging or out-of-memory trial fails and the study goes on; other errors stop it
            study.optimize(objective, callbacks=[enough, objective.after_trial],
                           catch=(TrainingError, torch.OutOfMemoryError, _StudyFull))
        except (KeyboardInterrupt, UrbansegError):  # keep what the finished trials tell
            write_study_outputs(study, study_dir, base, space, metric)
            raise
    else:
        print(f"study '{study_name}': {already} trials finished, {running} running elsewhere; nothing to start "
              f"for --trials {trials} (ask for more to go on)")
    outputs, notes = write_study_outputs(study, study_dir, base, space, metric)
    best = best_trial(study)
    return TuneResult(study_dir, len(study.get_trials(deepcopy=False, states=states)),
                      best.value if best else None, best.number if best else None, outputs, notes)


def open_storage(storage: Optional[str], study_dir: Path):
    """A database URL (sqlite:///, postgresql://, mysql+pymysql://) or a journal file path
    (default `<study dir>/journal.log`): one machine's processes share a journal file, several
    machines a database."""
    optuna = import_optuna()
    if storage and "://" in storage:
        try:  # a heartbeat lets other processes fail the trials of a machine that died
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
        except ImportError as error:
            raise ConfigError(f"--storage: {storage} needs a database driver that is not installed ({error})") from None
        except Exception as error:  # sqlalchemy's errors: a bad URL, no server, no permission
            raise ConfigError(f"--storage: cannot open {storage} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0]})") from None
    path = Path(storage) if storage else study_dir / JOURNAL_NAME
    if not path.parent.is_dir():
        raise ConfigError(f"--storage: {path.parent} is not a folder")
    journal = optuna.storages.journal
    return optuna.storages.JournalStorage(journal.JournalFileBackend(str(path)))


def make_pruner(optuna, name: str):
    """Optuna's defaults: the median pruner prunes from the sixth trial on, comparing with the
    median of earlier trials at the same step; hyperband gets its resources from the steps."""
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def _open_study(optuna, name: str, storage, metric: str, pruner: str, space: SearchSpace):
    """Create the study, or load it when it exists; a study keeps its metric and its space."""
    direction = "maximize" if MONITORS[metric][1] else "minimize"
    try:
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                    pruner=make_pruner(optuna, pruner))
    except ValueError as error:  # e.g. an existing study with the other direction
        raise ConfigError(f"--study {name}: {error}") from None
    for key, value in (("metric", metric), ("space", space.spec())):
        if key not in study.user_attrs:  # a new study: ours, or another process's that has not written it yet
            study.set_user_attr(key, value)
    saved = study.user_attrs  # read back after writing: a process starting at the same moment may have won
    if saved.get("metric") != metric:
        raise ConfigError(f"--metric: study '{name}' tunes {saved.get('metric')}, not {metric}; "
                          f"choose another --study to tune {metric}")
    elif saved.get("space") != space.spec():
        raise ConfigError(f"--space: {space.path} differs from the space study '{name}' was started with; "
                          f"choose another --study for a new space")
    return study


def fail_stale_trials(optuna, study, storage) -> None:
    """Mark failed the RUNNING trials whose process (on this machine) is gone, e.g. killed with
    SIGKILL: otherwise they would count as running for ever. (A database storage's heartbeat does
    this for every machine.)"""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and pid is not None and not _alive(pid):
            study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            print(f"trial {trial.number}: its process {pid} is gone; marked failed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class _Objective:
    """One trial: the trial's values on the base config, trained in `<study dir>/trial-<number>`."""

    def __init__(self, optuna, base: Config, space: SearchSpace, metric: str, study_dir: Path, trials: int):
        self.optuna, self.base, self.space, self.metric, self.study_dir = optuna, base, space, metric, study_dir
        self.trials, self.failures_in_a_row = trials, 0

    def __call__(self, trial) -> float:
        optuna, study = self.optuna, trial.study
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
        if sum(t.number < trial.number for t in study.get_trials(deepcopy=False, states=counted)) >= self.trials:
            trial.set_user_attr("error", f"not run: the study already had {self.trials} trials finished or running")
            study.stop()
            raise _StudyFull()
        values = suggest(trial, self.space)
        cfg = config_with(self.base, values)
        run_dir = self.study_dir / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        print(f"trial {trial.number}: {overrides_text(values, short=True)}", flush=True)
        key, higher_is_better = MONITORS[self.metric]
        reported: list[float] = []

        def report(step: int, metrics: dict) -> None:
            value = float(metrics[key])
            reported.append(value)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {step}")

        try:
            train(cfg, run_dir, on_evaluation=report)
        except (UrbansegError, torch.OutOfMemoryError) as error:  # noted in trials.csv; see `catch` in `tune`
            trial.set_user_attr("error", str(error).splitlines()[0])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted (Ctrl-C); its run directory stays as it was")
            raise
        return max(reported) if higher_is_better else min(reported)

    def after_trial(self, study, trial) -> None:
        """Print the trial's outcome, rewrite the outputs, and stop after `trials` failures in a row."""
        if trial.state == self.optuna.trial.TrialState.COMPLETE:
            best = study.best_trial
            print(f"trial {trial.number} complete: {self.metric} {trial.value:.4f} "
                  f"(best {best.value:.4f}, trial {best.number})", flush=True)
        elif trial.state == self.optuna.trial.TrialState.PRUNED:
            step = trial.last_step
            value = trial.intermediate_values.get(step) if step is not None else None
            print(f"trial {trial.number} pruned at step {step}: {self.metric} {value:.4f}", flush=True)
        elif "not run" not in trial.user_attrs.get("error", ""):
            print(f"trial {trial.number} failed: {trial.user_attrs.get('error', 'see its run directory')}", flush=True)
        write_study_outputs(study, self.study_dir, self.base, self.space, self.metric)
        failed = trial.state == self.optuna.trial.TrialState.FAIL and "not run" not in trial.user_attrs.get("error", "")
        self.failures_in_a_row = self.failures_in_a_row + 1 if failed else 0
        if self.failures_in_a_row >= max(self.trials, 3):
            study.stop()
            raise TrainingError(f"tune: {self.failures_in_a_row} trials in a row failed, the last with "
                                f"'{trial.user_attrs.get('error')}'; see {self.study_dir / 'trials.csv'}")
