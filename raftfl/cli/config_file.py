"""`--config FILE`: a command's flags from a TOML file; and the effective flags, as TOML.

A key is a flag's long name without its dashes (`lease-ttl = 5`, `self = "10.0.0.1:5000"`,
`nodes = ["10.0.0.2:5000", "10.0.0.3:5000"]`, `insecure = true`): a flag that takes no value
is a boolean, a repeatable one a list. The file is flat (no tables). Its values become the
command's `default_map`, so a flag given on the command line wins over the file, and the file
over the flag's default. Relative paths in it are relative to the working directory, as on
the command line. Each value is checked as the flag's own would be, and a bad one is one line
naming the file, the line and the key.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import click

from raftfl.cli.options import Decorator

NOT_IN_FILES = ("config", "print-config")  # flags about the file itself


class ConfigFileError(click.ClickException):
    """A config file that cannot be used: bad usage (exit 2), one line, no --help hint."""

    exit_code = 2


def file_keys(command: click.Command) -> dict[str, click.Option]:
    """The command's options by their key in a config file."""
    keys = {}
    for param in command.params:
        if isinstance(param, click.Option):
            key = next((o[2:] for o in param.opts if o.startswith("--")), None)
            if key is not None and key not in NOT_IN_FILES:
                keys[key] = param
    return keys


def _load(ctx: click.Context, param: click.Parameter, path: Path | None) -> None:
    """The eager --config callback: the file's values become the context's default_map."""
    if path is None:
        return
    values = read(path, ctx)
    ctx.default_map = {**(ctx.default_map or {}), **values}


def config_option() -> Decorator:
    return click.option(
        "--config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
        is_eager=True, expose_value=False, callback=_load, metavar="FILE",
        help="Take the flags from this TOML file (keys: the long flag names, e.g. "
             "lease-ttl = 5, nodes = [\"h:1\", \"h:2\"]); flags given here win.")


def read(path: Path, ctx: click.Context) -> dict[str, Any]:
    """The file's values by parameter name, each checked (ConfigFileError if one is bad)."""
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigFileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(_syntax_error(path, str(exc))) from None
    keys = file_keys(ctx.command)
    values = {}
    for key, value in data.items():
        param = keys.get(key)
        try:
            if key in NOT_IN_FILES:
                raise ValueError("a flag of the command line only")
            if param is None:
                close = difflib.get_close_matches(key, keys, n=1)
                raise ValueError("unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
            values[param.name] = _checked(ctx, param, value)
        except ValueError as exc:
            line = _line_of(text, key)
            where = f"{path} line {line}" if line else str(path)
            raise ConfigFileError(f"{where}: {key}: {exc}") from None
    return values


def _syntax_error(path: Path, message: str) -> str:
    """tomllib's "Invalid value (at line 3, column 13)" as "FILE line 3: ... (column 13)"."""
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message)
    if found is None:
        return f"{path}: TOML syntax error: {message}"
    what, line, column = found.groups()
    return f"{path} line {line}: TOML syntax error: {what[:1].lower()}{what[1:]} (column {column})"


def _line_of(text: str, key: str) -> int | None:
    """The line that sets `key` (bare or quoted, or as a table), if one does."""
    name = re.escape(key)
    found = re.search(rf"^[ \t]*(\[[ \t]*)?(?:{name}|\"{name}\"|'{name}')[ \t]*[=.\]]", text, re.M)
    return text.count("\n", 0, found.start()) + 1 if found else None


def _expected(param: click.Option) -> tuple[tuple[type, ...], str]:
    """The TOML types a value of `param` may have, and their name for an error line."""
    if param.is_flag:
        return (bool,), "true or false"
    if isinstance(param.type, click.types.IntParamType):
        return (int,), "an integer"
    if isinstance(param.type, click.types.FloatParamType):
        return (int, float), "a number"
    return (str,), "a string"


def _checked(ctx: click.Context, param: click.Option, value: Any) -> Any:
    """`value` if the flag takes it (as its type and range say); else ValueError saying why."""
    types, noun = _expected(param)

    def fits(item: Any) -> bool:  # TOML's true is no number
        return isinstance(item, types) and (bool in types or not isinstance(item, bool))

    if param.multiple:
        noun = f"a list of {noun.split(' ', 1)[1]}s"  # "a list of strings"
    if not (isinstance(value, list) and all(map(fits, value)) if param.multiple else fits(value)):
        raise ValueError(f"expected {noun}, got {toml_value(value)}")
    try:
        param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise ValueError(exc.message.rstrip(".")) from None
    return value


def toml_value(value: Any) -> str:
    """`value` (a flag's: str, int, float, bool, path, a list or tuple of them) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    # JSON's string escapes are TOML's; DEL is the one control character JSON leaves as it is.
    return json.dumps(str(value)).replace("\x7f", "\\u007f")


def render(title: str, values: dict[str, Any]) -> str:
    """A config file that sets `values` (by key; None: unset, shown as a comment)."""
    lines = [f"# {title}"]
    for key, value in values.items():
        lines.append(f"# {key}: not set" if value is None else f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def effective(ctx: click.Context) -> dict[str, Any]:
    """Every option a config file may set, with the value the command runs with."""
    return {key: ctx.params.get(param.name) for key, param in file_keys(ctx.command).items()}
