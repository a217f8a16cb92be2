"""Loading a recipe: profile tables, overrides ('stage.field': value) and CLI flags derived from the
parameter dataclasses.

    recipe = load("seva", profile="toy", overrides={"train.beta": 0.2})
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import fields, replace
from typing import Any

from visalign.recipes.params import STAGES, ConfigError, Recipe
from visalign.recipes.validate import PAPERS, validate

# The papers' settings (METHODS.md): only what differs from the dataclass defaults is listed.
PAPER: dict[str, dict[str, Any]] = {name: paper.PAPER for name, paper in PAPERS.items()}
# Scaled down for toyworld's tiny model on two CPU cores.
TOY: dict[str, dict[str, Any]] = {name: paper.TOY for name, paper in PAPERS.items()}
PROFILES = {"paper": PAPER, "toy": TOY}


def names() -> list[str]:
    return sorted(PAPER)


def load(name: str, profile: str = "paper", overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe `name` under `profile`, with `overrides` ('stage.field': value) applied."""
    problems = []
    if name not in PAPER:
        problems.append(f"recipe={name!r}: unknown recipe; choose one of {names()}")
    if profile not in PROFILES:
        problems.append(f"profile={profile!r}: unknown profile; choose one of {sorted(PROFILES)}")
    if problems:
        raise ConfigError(problems)
    merged = {**PAPER[name], **PROFILES[profile].get(name, {}), **(overrides or {})}
    recipe = apply_overrides(Recipe(name=name), merged)
    validate(recipe)
    return recipe


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Parse CLI/pipeline strings into the field's type; raise ValueError naming the rule."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if isinstance(value, (int, float)):
            value = [value]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if not value.startswith("[") else json.loads(value)
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{where}={value!r}: expected true or false")
        return bool(value)
    if annotation in (int, float, str):
        try:
            out = annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}={value!r}: expected {annotation.__name__}") from None
        if annotation is int and isinstance(value, float) and value != out:
            raise ValueError(f"{where}={value!r}: expected an integer")
        return out
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Apply {'stage.field': value}; every unknown key or bad value is reported at once."""
    problems: list[str] = []
    per_stage: dict[str, dict[str, Any]] = {}
    stage_types = _field_types(Recipe)
    for key, value in overrides.items():
        stage, _, name = key.partition(".")
        if stage not in STAGES or not name:
            problems.append(f"{key}: unknown parameter; keys look like 'stage.field' with stage in {list(STAGES)}")
            continue
        hints = _field_types(stage_types[stage])
        if name not in hints:
            problems.append(f"{key}: unknown field of {stage}; known: {sorted(hints)}")
            continue
        try:
            per_stage.setdefault(stage, {})[name] = _coerce(value, hints[name], key)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(problems)
    return replace(recipe, **{s: replace(getattr(recipe, s), **kv) for s, kv in per_stage.items()})


# ---- deriving CLI flags from the dataclasses -------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """Add --recipe/--profile and one --<field> flag per field of the stage's parameters."""
    parser.add_argument("--recipe", default="seva", help=f"Recipe whose defaults apply: {names()}.")
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES),
                        help="paper: the papers' values; toy: scaled down for the toyworld model.")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                        help="Override any recipe parameter (repeatable).")
    cls = _field_types(Recipe)[stage]
    group = parser.add_argument_group(f"{stage} parameters (default: the recipe's)")
    for f in fields(cls):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", default=None,
                           help=f.metadata.get("help", ""))


def recipe_from_args(args: argparse.Namespace, stage: str) -> Recipe:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError([f"--set {item!r}: write it as STAGE.FIELD=VALUE"])
        overrides[key] = value
    for k, v in vars(args).items():
        if k.startswith("param_") and v is not None:
            overrides[f"{stage}.{k[len('param_'):]}"] = v
    return load(args.recipe, args.profile, overrides)
