"""Load plain YAML data into frozen, typed dataclasses, strictly.

The dataclass is the schema: its fields name the keys, its type hints the value types,
its defaults what a missing key means. Anything else is a ``ConfigError`` that names the
dotted key and the file::

    unknown key 'replay_windw' in transport (/etc/mld/mld.yaml): did you mean 'replay_window'?
    transport.replay_window in /etc/mld/mld.yaml: expected an integer, got 'abc' (str)

Supported field types: ``str``, ``int``, ``float`` (an int is accepted), ``bool``,
``Literal[...]``, ``tuple[T, ...]``, ``dict[str, T]``, nested dataclasses and ``T | None``.
YAML null is only accepted for ``T | None`` fields; ``bool`` is never taken for a number.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from base.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["build", "load_yaml", "replace_path", "to_dict"]

D = TypeVar("D", bound="DataclassInstance")

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; an empty file gives ``{}``.

    Raises ConfigError when the file cannot be read, is not valid YAML (with the line),
    repeats a key in one mapping, or does not hold a mapping at the top level.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist: check the path given with --config or "
            "$MLD_CONFIG, or copy config/mld.yaml there"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory: pass the path of the YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (bad byte at offset {exc.start}): "
            "save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}; check its permissions"
        ) from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"invalid YAML in {path}{where}: {what}; fix the file there") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (such as 'transport:') at "
            f"the top level, got {_show(data)}"
        )
    return data


def build(cls: type[D], data: object, *, source: str, prefix: str = "") -> D:
    """Build a ``cls`` instance from ``data``, a mapping parsed from YAML.

    ``source`` names where the data came from (a file path, an etcd key) and ``prefix``
    is the dotted path of this section, both for error messages. Keys absent from
    ``data`` take the dataclass defaults.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{_where(prefix, source)}: expected a section (a mapping of keys), got {_show(data)}"
        )
    fields = _config_fields(cls)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key(key, fields, prefix, source)
        values[key] = _convert(hints[key], value, _join(prefix, key), source)
    for name, field in fields.items():
        no_default = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if name not in values and no_default:
            raise ConfigError(f"{_join(prefix, name)} is missing in {source}: give it a value")
    return cls(**values)


def replace_path(instance: D, dotted_key: str, value: object, *, source: str) -> D:
    """Return a copy of ``instance`` with the value at ``dotted_key`` replaced.

    ``value`` is a parsed YAML/JSON value and is checked as :func:`build` checks it.
    A key may end inside a ``dict[str, T]`` field to set one entry
    (``transport.peers.detector-1``). ``source`` names where the change came from.
    """
    parts = dotted_key.split(".")
    if "" in parts:
        raise ConfigError(
            f"invalid key {dotted_key!r} from {source}: "
            "expected dotted names such as 'transport.replay_window'"
        )
    return _replace(instance, parts, value, "", source)


def to_dict(instance: DataclassInstance) -> dict[str, Any]:
    """Return the config as plain nested dicts and lists (tuples become lists)."""
    return {name: _plain(getattr(instance, name)) for name in _config_fields(type(instance))}


# libyaml's parser when PyYAML was built with it: the config is read by every command, and
# the pure-Python parser took ~0.1 s of `mld detector analyze`'s start-up on mld.yaml.
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_line: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first at line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _replace(instance: D, parts: list[str], value: object, prefix: str, source: str) -> D:
    name, rest = parts[0], parts[1:]
    fields = _config_fields(type(instance))
    if name not in fields:
        raise _unknown_key(name, fields, prefix, source)
    path = _join(prefix, name)
    hint = get_type_hints(type(instance))[name]
    current = getattr(instance, name)
    new: Any
    if not rest:
        new = _convert(hint, value, path, source)
    elif dataclasses.is_dataclass(current) and not isinstance(current, type):
        new = _replace(current, rest, value, path, source)
    elif get_origin(_strip_optional(hint)) is dict:
        entry = ".".join(rest)
        checked = _convert(get_args(_strip_optional(hint))[1], value, f"{path}.{entry}", source)
        new = {**(current or {}), entry: checked}
    else:
        raise ConfigError(
            f"{path} in {source} holds a single value, not a section: "
            f"cannot set {_join(path, '.'.join(rest))}"
        )
    return dataclasses.replace(instance, **{name: new})


def _convert(hint: Any, value: object, path: str, source: str) -> Any:
    """Check ``value`` against the type hint ``hint`` and return it in that type."""
    origin = get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in get_args(hint):
            return None
        return _convert(_strip_optional(hint), value, path, source)
    if value is None:
        raise ConfigError(
            f"{path} in {source}: expected {_expected(hint)}, got null; "
            "give a value, or delete the key to use the default"
        )
    if origin is Literal:
        choices = get_args(hint)
        if not any(value == c and type(value) is type(c) for c in choices):
            raise _type_error(hint, value, path, source)
        return value
    if origin is tuple:
        return _convert_tuple(hint, value, path, source)
    if origin is dict:
        return _convert_dict(hint, value, path, source)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return build(hint, value, source=source, prefix=path)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        ok = False
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"unsupported type {hint!r} for config key {path}")
    if not ok:
        raise _type_error(hint, value, path, source)
    return value


def _convert_tuple(hint: Any, value: object, path: str, source: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise _type_error(hint, value, path, source)
    args = get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        item_hints = (args[0],) * len(value)
    elif len(args) != len(value):
        raise ConfigError(
            f"{path} in {source}: expected a list of {len(args)} items, got {len(value)}"
        )
    else:
        item_hints = args
    return tuple(
        _convert(item_hint, item, f"{path}[{i}]", source)
        for i, (item_hint, item) in enumerate(zip(item_hints, value, strict=True))
    )


def _convert_dict(hint: Any, value: object, path: str, source: str) -> dict[str, Any]:
    key_hint, value_hint = get_args(hint)
    if key_hint is not str:
        raise TypeError(f"unsupported type {hint!r} for config key {path}: keys must be str")
    if not isinstance(value, Mapping):
        raise _type_error(hint, value, path, source)
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ConfigError(
                f"{path} in {source}: keys must be strings, got {_show(key)}; quote the key"
            )
        result[key] = _convert(value_hint, item, f"{path}.{key}", source)
    return result


def _config_fields(cls: type[DataclassInstance]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _strip_optional(hint: Any) -> Any:
    """``T | None`` -> ``T``; any other hint is returned as it is."""
    origin = get_origin(hint)
    if origin is not typing.Union and origin is not types.UnionType:
        return hint
    args = [a for a in get_args(hint) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"unsupported union {hint!r}: only `T | None` is supported")
    return args[0]


def _plain(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _unknown_key(
    key: object, fields: Mapping[str, object], prefix: str, source: str
) -> ConfigError:
    where = f"in {prefix} ({source})" if prefix else f"at the top level of {source}"
    kind = "key" if prefix else "section"
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid {kind}s: {', '.join(fields)}"
    return ConfigError(f"unknown {kind} {key!r} {where}: {hint}")


def _type_error(hint: Any, value: object, path: str, source: str) -> ConfigError:
    return ConfigError(f"{path} in {source}: expected {_expected(hint)}, got {_show(value)}")


def _expected(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(hint))
    if origin is tuple:
        return "a list"
    if origin is dict:
        return "a mapping"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "a section (a mapping of keys)"
    names = {bool: "a boolean (true or false)", int: "an integer", float: "a number"}
    return names.get(hint, "a string" if hint is str else repr(hint))


def _show(value: object) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _where(path: str, source: str) -> str:
    return f"{path} in {source}" if path else source


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
