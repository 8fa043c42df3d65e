"""Config plumbing: typed dataclasses feed YAML files, the CLI and Python callers alike.

Each stage owns a dataclass whose fields carry ``metadata={"help": ...}`` (the
TRL convention). A YAML file gives the defaults, command-line flags override
them (parsed by ``tyro``), and Python callers build the dataclass directly.
Unknown keys and wrong types are errors that name the file, line and key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar

import dacite
import tyro
import yaml

from stepdpo.errors import ConfigError
from stepdpo.records import atomic_write_text

ConfigT = TypeVar("ConfigT")

_STRICT = dacite.Config(strict=True, check_types=True, cast=[tuple])


def _key_line(path: Path, dotted: str) -> int | None:
    """Line (1-based) of a dotted key in a YAML file, for error messages."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        for key_node, value_node in node.value:
            if key_node.value == part:
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            return None
    return line


def config_from_dict(cls: type[ConfigT], data: dict[str, Any], source: str = "<dict>") -> ConfigT:
    """Build a config dataclass strictly: unknown keys and wrong types raise ConfigError."""
    path = Path(source)
    try:
        return dacite.from_dict(cls, data, config=_STRICT)
    except dacite.UnexpectedDataError as err:
        key = sorted(err.keys)[0]
        line = _key_line(path, key) if path.exists() else None
        where = f"{source}:{line}" if line else source
        valid = ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        raise ConfigError(f"{where}: unknown key '{key}' for {cls.__name__} (valid: {valid})") from None
    except dacite.WrongTypeError as err:
        line = _key_line(path, err.field_path) if path.exists() else None
        where = f"{source}:{line}" if line else source
        raise ConfigError(f"{where}: key '{err.field_path}' expects {getattr(err.field_type, '__name__', err.field_type)}, got {err.value!r}") from None
    except dacite.DaciteError as err:
        raise ConfigError(f"{source}: {err}") from None


class OptionCheck:
    """Checks the values of one config before any work starts (each config's ``validate(prefix)`` uses it).

    A failure raises :class:`ConfigError` with one line naming the option as YAML files and flags spell it
    (``prefix`` + field, e.g. ``sample.k``), the rule, and the value given. ``None`` means "not set" and
    passes every bound.
    """

    def __init__(self, config: Any, prefix: str = ""):
        self.config = config
        self.prefix = prefix

    def fail(self, name: str, rule: str) -> NoReturn:
        raise ConfigError(f"option {self.prefix}{name} {rule}, got {getattr(self.config, name)!r}")

    def require(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            self.fail(name, rule)

    def _values(self, names: Sequence[str]) -> list[tuple[str, Any]]:
        return [(name, getattr(self.config, name)) for name in names if getattr(self.config, name) is not None]

    def at_least(self, minimum: float, *names: str) -> None:
        for name, value in self._values(names):
            self.require(value >= minimum, name, f"must be >= {minimum}")

    def above(self, bound: float, *names: str) -> None:
        for name, value in self._values(names):
            self.require(value > bound, name, f"must be > {bound}")

    def share(self, *names: str, zero: bool = True, one: bool = True) -> None:
        """Each value lies in [0, 1]; ``zero=False`` / ``one=False`` exclude that end."""
        rule = f"must lie in {'[' if zero else '('}0, 1{']' if one else ')'}"
        for name, value in self._values(names):
            self.require((0 <= value if zero else 0 < value) and (value <= 1 if one else value < 1), name, rule)

    def not_empty(self, *names: str) -> None:
        """Each value (a string or a list of strings) is not empty and holds no empty string."""
        for name, value in self._values(names):
            items = [value] if isinstance(value, str) else list(value)
            self.require(bool(items) and all(str(item).strip() for item in items), name, "must not be empty")

    def no_empty_strings(self, *names: str) -> None:
        """Each value (a list of strings, e.g. stop strings) holds no empty string; an empty list is fine."""
        for name, value in self._values(names):
            self.require(all(item for item in value), name, "must not hold an empty string")


def validate_config(config: Any, prefix: str = "") -> None:
    """``config.validate(prefix)`` when the config has one (every stage's does): refuse bad options up front."""
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate(prefix)


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls: type[ConfigT], path: str | os.PathLike, defaults: ConfigT | None = None) -> ConfigT:
    """Read a YAML file into a config dataclass, its options over ``defaults`` (default: the class's own), as
    ``--config FILE`` reads it: a section such as ``eval: {limit: 5}`` keeps the other defaults its parent gives it."""
    start = defaults if defaults is not None else _class_defaults(cls)
    base = config_to_dict(start) if start is not None else {}
    return config_from_dict(cls, _deep_merge(base, _read_yaml_mapping(Path(path))), str(path))


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level")
    return data


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True))


def _class_defaults(cls: type[ConfigT]) -> ConfigT | None:
    """``cls()`` when every field has a default, else None.

    A YAML section such as ``eval: {limit: 5}`` is merged onto these, so the section keeps
    the defaults its parent gave it (``RunConfig.eval`` primes steps) instead of falling
    back to the section class's own (``EvalConfig`` alone would use the boxed prompt).
    """
    try:
        return cls()
    except TypeError:
        return None


def parse_cli(
    cls: type[ConfigT],
    argv: Sequence[str],
    prog: str,
    description: str | None = None,
    from_other_file: Callable[[Path, dict[str, Any]], ConfigT | None] | None = None,
) -> ConfigT:
    """Parse ``[--config FILE.yaml] [--field value ...]`` into ``cls``; flags override the file.

    ``from_other_file(path, mapping)`` may read a file that is not ``cls``'s own (a stage given
    the run config it is a section of); it returns None for a file it does not take.
    """
    argv = list(argv)
    defaults: ConfigT | None = None
    # A class with presets (``preset_config(name)``) starts from the preset; YAML and flags go on top.
    if "--preset" in argv and hasattr(cls, "preset_config"):
        at = argv.index("--preset")
        if at + 1 < len(argv):
            try:
                defaults = cls.preset_config(argv[at + 1])  # type: ignore[attr-defined]
            except ValueError as err:
                raise ConfigError(str(err)) from None
    for flag in ("--config", "-c"):
        if flag in argv:
            at = argv.index(flag)
            if at + 1 >= len(argv):
                raise ConfigError(f"{flag} needs a path to a YAML file")
            path = Path(argv[at + 1])
            other = from_other_file(path, _read_yaml_mapping(path)) if from_other_file is not None else None
            defaults = other if other is not None else load_config(cls, path, defaults)
            del argv[at : at + 2]
    return tyro.cli(
        cls,
        args=argv,
        default=defaults,
        prog=prog,
        description=description,
        config=(tyro.conf.FlagConversionOff,),
    )
