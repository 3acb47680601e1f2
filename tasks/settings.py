"""A stage's settings, declared once on its frozen dataclass and read by every form.

Each knob of a stage (``TrainConfig``, ``EvalConfig``, ``GRPOConfig``) is a ``setting``: its
default, bounds, choices and description sit in the field's declaration. The stage checks them
(``check_settings``, from its ``__post_init__``), and the flows' pydantic forms
(``tasks/configs.py``) are generated from them (``form_fields``), under a prefix where one form
holds several stages (``eval_n``, ``rl_steps``). The translator reads them back
(``stage_values``). A default, a bound or a description therefore cannot differ between
``python -m tasks.train``, a study YAML and the Prefect UI: there is one of each.

Fields declared with plain ``dataclasses.field`` (paths, the output folder, the objective) are
a run's identity, filled in by the translator, not knobs on a form.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

from pydantic import Field

from tasks.profiles import DEFAULT, profile

_SETTING = "setting"  # the metadata key that marks a knob


def setting(default: Any, description: str, *, ge: float | None = None,
            gt: float | None = None, le: float | None = None,
            choices: tuple | None = None, profile: str | None = None) -> Any:
    """A stage knob with its one default, bounds (ge, gt, le: inclusive / exclusive / inclusive,
    on the value or on each element of a tuple), closed choices and description. profile names
    the ``tasks.profiles.Profile`` attribute an empty (None) value takes: the profile's."""
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt), ("le", le))
              if value is not None}
    metadata = {_SETTING: {"description": description, "bounds": bounds, "choices": choices,
                           "profile": profile}}
    return dataclasses.field(default=default, metadata=metadata)


def knobs(stage: type) -> list[dataclasses.Field]:
    """The stage's settings, in declaration order."""
    return [f for f in dataclasses.fields(stage) if _SETTING in f.metadata]


def profile_defaults(stage: type, profile_name: str, prefix: str = "") -> dict[str, Any]:
    """{prefix + knob: the profile's value} for the stage's knobs whose empty value means "the
    profile's" (the prompt template, the response caps)."""
    chosen = profile(profile_name)
    return {prefix + f.name: getattr(chosen, f.metadata[_SETTING]["profile"])
            for f in knobs(stage) if f.metadata[_SETTING]["profile"]}


def fill_profile_defaults(config: Any, profile_name: str = DEFAULT) -> None:
    """Give a frozen stage config's empty profile knobs the profile's values (a stage config
    made without a form, e.g. by ``python -m tasks.train``, has the embedded default's)."""
    for name, value in profile_defaults(type(config), profile_name).items():
        if getattr(config, name) is None:
            object.__setattr__(config, name, value)


def check_settings(config: Any) -> None:
    """Refuse a knob outside its bounds or choices, naming it (a stage's __post_init__ calls
    this; its cross-field rules follow there)."""
    for f in knobs(type(config)):
        declared = f.metadata[_SETTING]
        value = getattr(config, f.name)
        if value is None:
            continue
        if declared["choices"] and value not in declared["choices"]:
            raise ValueError(f"{f.name}={value!r} is not one of {', '.join(declared['choices'])}")
        for element in value if isinstance(value, tuple) else (value,):
            _check_bounds(f.name, element, declared["bounds"])


def _check_bounds(name: str, value: Any, bounds: dict) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={value} must be a finite number")
    if "ge" in bounds and value < bounds["ge"]:
        raise ValueError(f"{name}={value} must be >= {bounds['ge']:g}")
    if "gt" in bounds and value <= bounds["gt"]:
        raise ValueError(f"{name}={value} must be > {bounds['gt']:g}")
    if "le" in bounds and value > bounds["le"]:
        raise ValueError(f"{name}={value} must be <= {bounds['le']:g}")


def form_fields(stage: type, prefix: str = "", *, exclude: tuple[str, ...] = (),
                group: str = "") -> dict[str, tuple[Any, Any]]:
    """Pydantic field definitions (for ``pydantic.create_model``) of the stage's knobs, named
    prefix + knob: the same default, bounds and description, choices as a ``Literal`` (a
    drop-down in the Prefect UI), tuples as lists (YAML lists). group heads each description."""
    hints = typing.get_type_hints(stage)
    fields = {}
    for f in knobs(stage):
        if f.name in exclude:
            continue
        declared = f.metadata[_SETTING]
        annotation = _form_type(hints[f.name], declared["choices"])
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        description = f"{group}: {declared['description']}" if group else declared["description"]
        fields[prefix + f.name] = (annotation, Field(default, description=description,
                                                     **_form_bounds(annotation, declared)))
    return fields


def _form_type(hint: Any, choices: tuple | None) -> Any:
    optional = type(None) in typing.get_args(hint) and isinstance(hint, types.UnionType)
    if choices:
        choice = Literal.__getitem__(tuple(choices))
        return choice | None if optional else choice
    if typing.get_origin(hint) is tuple:
        return list[typing.get_args(hint)[0]]
    return hint


def _form_bounds(annotation: Any, declared: dict) -> dict:
    """Bounds as pydantic constraints; on a list they bound each element (pydantic's ge/le
    apply to scalars only), so those stay with the stage's own check."""
    if typing.get_origin(annotation) is list:
        return {}
    return dict(declared["bounds"])


def stage_values(form: Any, stage: type, prefix: str = "",
                 exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The form's values of the stage's knobs, by the stage's names (prefix dropped); knobs the
    form does not hold keep the stage's default."""
    values = {}
    for f in knobs(stage):
        name = prefix + f.name
        if f.name not in exclude and name in type(form).model_fields:
            value = getattr(form, name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return values


def built_for_form(build, stage: type, prefix: str = "", what: str = ""):
    """build() (a stage config made from a form's fields), its refusal worded in the form's
    field names: "ks=[1, 8] ..." becomes "eval_ks=[1, 8] ..." for the eval_* fields."""
    try:
        return build()
    except ValueError as error:
        message = str(error)
        if prefix:
            names = sorted((f.name for f in knobs(stage)), key=len, reverse=True)
            message = re.sub(r"(?<![\w.])(" + "|".join(names) + r")(?=[= ])", prefix + r"\1",
                             message)
        raise ValueError(f"{what}: {message}" if what else message) from None
