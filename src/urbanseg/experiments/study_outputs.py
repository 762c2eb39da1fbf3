"""What a tuning study's folder holds for its reader, rewritten after every trial (atomically, so a
study stopped at any moment keeps complete files; several processes may write them in turn):

- `best.yaml`: the best trial's complete config, ready for `urbanseg train --config best.yaml`;
- `trials.csv`: one row per trial: state, value, last reported step, values, run directory, note;
- `figures/`: Optuna's matplotlib plots: optimisation history, parameter importances (PED-ANOVA,
  from 2 complete trials on), intermediate values (the curves the pruner compared).

The study itself (its storage) is the source of truth; these files are views of it.
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import yaml

from ..config import Config
from ..files import atomic_write, write_text
from .space import SearchSpace, as_text, config_with, overrides_text, values_of


def write_study_outputs(study, study_dir: Path, base: Config, space: SearchSpace, metric: str) -> tuple[list[Path], list[str]]:
    """Write the three outputs; returns the files written and notes on what could not be drawn yet."""
    written = [write_trials_csv(study, study_dir / "trials.csv", space, metric)]
    best = best_trial(study)
    if best is not None:
        written.append(write_best_config(study, best, study_dir / "best.yaml", base, space, metric))
    figures, notes = write_figures(study, study_dir / "figures", metric)
    return written + figures, notes


def write_trials_csv(study, path: Path, space: SearchSpace, metric: str) -> Path:
    keys = [p.key for p in space.params]
    columns = ["number", "state", metric, "last_step", *keys, "run_dir", "started", "seconds", "note"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    for trial in study.get_trials(deepcopy=False):
        params = values_of(trial.params, space)
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        writer.writerow({
            "number": trial.number, "state": trial.state.name.lower(),
            metric: _value(trial), "last_step": trial.last_step if trial.last_step is not None else "",
            **{key: as_text(params[key]) if key in params else "" for key in keys},
            "run_dir": trial.user_attrs.get("run_dir", ""),
            "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else "",
            "seconds": f"{seconds:.1f}" if seconds is not None else "", "note": trial.user_attrs.get("error", ""),
        })
    return write_text(path, text.getvalue())


def write_best_config(study, best, path: Path, base: Config, space: SearchSpace, metric: str) -> Path:
    values = values_of(best.params, space)
    cfg = config_with(base, values)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
    header = (f"# urbanseg tune, study '{study.study_name}': the best of {finished} finished trials is trial "
              f"{best.number} ({metric} {best.value:.4f}, run {best.user_attrs.get('run_dir', '?')})\n"
              f"# its values: {overrides_text(values)}\n"
              f"# train it: urbanseg train --config {path}\n")
    return write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def write_figures(study, folder: Path, metric: str) -> tuple[list[Path], list[str]]:
    """Optuna's matplotlib plots that the trials so far can support, and notes on the others."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    from matplotlib import pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    reported = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    wanted = {"optimization_history": (plots.plot_optimization_history, len(complete) >= 1, "1 complete trial"),
              # PED-ANOVA, named: Optuna 4's default (fANOVA) needs scikit-learn
              "param_importances": (lambda s: plots.plot_param_importances(s, evaluator=PedAnovaImportanceEvaluator()),
                                    len(complete) >= 2, "2 complete trials"),
              "intermediate_values": (plots.plot_intermediate_values, len(reported) >= 1, "1 reported evaluation")}
    written, notes = [], []
    for name, (plot, possible, needs) in wanted.items():
        if not possible:
            notes.append(f"figures/{name}.png: needs at least {needs} ({len(complete)} complete so far)")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:  # e.g. importances of values that never varied
                notes.append(f"figures/{name}.png: not drawn ({error})")
                continue
        if name != "param_importances":
            axes.set_ylabel(metric)
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = folder / f"{name}.png"
        atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
        plt.close(figure)
        written.append(path)
    return written, notes


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _value(trial) -> str:
    if trial.value is not None:
        return f"{trial.value:.6g}"
    if trial.state.name == "PRUNED" and trial.last_step is not None:
        return f"{trial.intermediate_values[trial.last_step]:.6g}"  # the value it was pruned at
    return ""
