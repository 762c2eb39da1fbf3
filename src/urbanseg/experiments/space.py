"""A search space for `urbanseg tune`: a YAML file mapping dotted config keys to distributions.

    optim.lr: {log_float: [1e-4, 1e-2]}
    optim.weight_decay: {float: [0.0, 0.001]}
    data.batch_size: {int: [4, 16], step: 4}
    model.encoder: {choice: [resnet18, resnet34]}
    data.crop: {choice: [[64, 128], [96, 192]]}

Kinds: `float`, `log_float`, `int`, `log_int` (each `[low, high]`, `step` optional for `float` and
`int`) and `choice` (a list of values of any YAML type). Everything is checked before a trial
starts (`load_space`, then `check_space` against the base config): the file's form, the ranges,
and that the low end, the high end and every choice give a valid config - an unknown key or a
value of the wrong type fails with the file and the key named. This module needs no Optuna:
`suggest` only calls the `suggest_*` methods of the trial it is given.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from ..config import Config, apply_overrides, from_dict, yaml_problem
from ..errors import ConfigError

KINDS = ("float", "log_float", "int", "log_int", "choice")
SCALARS = (type(None), bool, int, float, str)  # what Optuna stores as a categorical value as is


@dataclass(frozen=True)
class Param:
    """One dotted config key and the distribution its values are drawn from."""

    key: str
    kind: str  # one of KINDS
    low: Union[int, float, None] = None
    high: Union[int, float, None] = None
    step: Union[int, float, None] = None
    choices: tuple = ()

    def spec(self) -> dict:
        """The entry as written in a space file (stored with the study to recognise it on resume)."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        return {self.kind: [self.low, self.high], **({"step": self.step} if self.step is not None else {})}

    def extremes(self) -> list:
        """The values that must all give a valid config: both ends of a range, every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    params: tuple[Param, ...]

    def spec(self) -> dict:
        return {p.key: p.spec() for p in self.params}


def load_space(path: Union[str, Path]) -> SearchSpace:
    """Read and check a space file: known kinds, numbers in order, a positive range for log kinds."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: search space file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(error)})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of dotted config keys to distributions, "
                          f"such as 'optim.lr: {{log_float: [1e-4, 1e-2]}}'")
    return SearchSpace(path, tuple(_param(str(key), spec, path) for key, spec in raw.items()))


def _param(key: str, spec: Any, path: Path) -> Param:
    where = f"{path}: {key}"
    kinds = [k for k in spec if k in KINDS] if isinstance(spec, dict) else []
    extra = [k for k in spec if k not in KINDS and k != "step"] if isinstance(spec, dict) else []
    if len(kinds) != 1 or extra:
        raise ConfigError(f"{where}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}} "
                          f"(plus 'step' for float and int), got {spec!r}")
    kind = kinds[0]
    value, step = spec[kind], spec.get("step")
    if kind == "choice":
        if step is not None:
            raise ConfigError(f"{where}: 'step' belongs to float and int ranges, not to a choice")
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: expected {{choice: [value, ...]}} with at least one value, got {value!r}")
        if len({as_text(v) for v in value}) != len(value):
            raise ConfigError(f"{where}: the choice lists a value twice: {value!r}")
        return Param(key, kind, choices=tuple(value))
    number = float if kind.endswith("float") else int
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{where}: expected {{{kind}: [low, high]}}, got {value!r}")
    low, high = (_number(v, number, where) for v in value)
    if step is not None:
        if kind.startswith("log"):
            raise ConfigError(f"{where}: 'step' cannot go with a log scale (use {kind[4:]} for a stepped range)")
        step = _number(step, number, f"{where}.step")
        if step <= 0:
            raise ConfigError(f"{where}: expected step > 0, got {step}")
        if number is int and (high - low) % step:
            raise ConfigError(f"{where}: high - low ({high - low}) is not a multiple of step {step}")
    if not low < high:
        raise ConfigError(f"{where}: expected low < high, got [{low}, {high}]")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got [{low}, {high}]")
    return Param(key, kind, low, high, step)


def _number(value: Any, number: type, where: str) -> Union[int, float]:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if number is int:
        if isinstance(value, int):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    try:
        result = float(value)  # YAML reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(result):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return result


def check_space(space: SearchSpace, base: Config) -> None:
    """Every value the space can produce gives a valid config: each key alone at each of its
    extremes, and all keys at their low ends and at their high ends together. Model choices are
    built once (random weights, nothing downloaded), so a wrong encoder name fails here too."""
    from ..engine.model import build_model  # here: the form of a space can be checked without PyTorch
    from ..engine.state import check_settings

    candidates = [{p.key: value} for p in space.params for value in p.extremes()]  # first: errors name one key
    candidates += [{p.key: p.extremes()[0] for p in space.params}, {p.key: p.extremes()[-1] for p in space.params}]
    models_built: list[dict] = []
    for values in candidates:
        try:
            cfg = config_with(base, values)
            check_settings(cfg)
            if any(key.startswith("model.") for key in values) and dataclasses.asdict(cfg.model) not in models_built:
                build_model(cfg.model, num_classes=2, pretrained=False)
                models_built.append(dataclasses.asdict(cfg.model))
        except ConfigError as error:
            shown = ", ".join(f"{k}={as_text(v)}" for k, v in values.items())
            raise ConfigError(f"{space.path}: {shown} gives an invalid config ({error})") from None


def config_with(base: Config, values: dict) -> Config:
    """`base` with each dotted key set to its value, checked like a command-line override."""
    raw = copy.deepcopy(base.to_dict())
    return from_dict(apply_overrides(raw, [f"{key}={as_text(value)}" for key, value in values.items()]))


def suggest(trial, space: SearchSpace) -> dict:
    """Draw one value per key from an Optuna trial. A choice of non-scalar values (lists, mappings)
    is offered to Optuna as their YAML text (Optuna stores scalars only) and read back here."""
    values = {}
    for p in space.params:
        if p.kind == "choice":
            if all(isinstance(c, SCALARS) for c in p.choices):
                values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
            else:
                values[p.key] = yaml.safe_load(trial.suggest_categorical(p.key, [as_text(c) for c in p.choices]))
        elif p.kind.endswith("float"):
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.kind == "log_float")
        else:
            values[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.kind == "log_int")
    return values


def values_of(params: dict, space: SearchSpace) -> dict:
    """A finished trial's stored parameters as config values (the inverse of `suggest`)."""
    choices_as_text = {p.key for p in space.params
                       if p.kind == "choice" and not all(isinstance(c, SCALARS) for c in p.choices)}
    return {key: yaml.safe_load(value) if key in choices_as_text else value for key, value in params.items()}


def overrides_text(values: dict, short: bool = False) -> str:
    """`key=value ...` as a user would type them after `urbanseg train` (`short`: floats to 4 digits)."""
    return " ".join(f"{key}={format(value, '.4g') if short and isinstance(value, float) else as_text(value)}"
                    for key, value in values.items())


def as_text(value: Any) -> str:
    """One-line YAML that reads back as `value` (1e-05 stays a float, 'null' stays a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text[:-len("\n...")].strip() if text.endswith("\n...") else text
