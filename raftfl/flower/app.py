"""A Flower app directory, read the way Flower reads it, and the Contexts Flower would build.

A Flower app is a directory with a `pyproject.toml`:

    [tool.flwr.app.components]
    serverapp = "pkg.server_app:app"
    clientapp = "pkg.client_app:app"

    [tool.flwr.app.config]          # the run config; nested tables flatten to "a.b" keys
    num-server-rounds = 3

`--run-config` and `--node-config` use Flower's syntax: space-separated `key=value` pairs whose
values are TOML (`lr=0.1 name="x" flag=true`), or the path of one `.toml` file. Run-config
overrides must name keys the app declares, as with `flwr run`. (Flower's own parser lives in a
private module, so this is a re-implementation of the same rules on the stdlib's tomllib.)
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftfl.core.errors import RaftflError

UserConfig = dict[str, bool | int | float | str]

_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")  # Flower's key=value pattern
_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_REQUIREMENT_NAME = re.compile(r"^\s*[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_import_lock = threading.Lock()


class AppError(RaftflError):
    """A Flower app directory or config that cannot be used (one line, for the CLI)."""


def _flatten(table: dict[str, Any], prefix: str = "") -> UserConfig:
    flat: UserConfig = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            raise AppError(f"config value of {name!r} must be a bool, int, float or string, "
                           f"not {type(value).__name__}")
    return flat


def parse_config(config: str | Sequence[str] | None) -> UserConfig:
    """Parse `--run-config`/`--node-config` text (one string, or several as repeated flags)."""
    lines = [config] if isinstance(config, str) else list(config or [])
    lines = [line for line in lines if line.strip()]
    if len(lines) == 1 and lines[0].strip().endswith(".toml"):
        path = Path(lines[0].strip()).expanduser()
        try:
            return _flatten(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AppError(f"cannot read config file {path}: {exc}") from None
    parsed: dict[str, Any] = {}
    for line in lines:
        if line.strip().endswith(".toml"):
            raise AppError("a .toml config file cannot be combined with key=value pairs")
        pairs = _PAIR.findall(line)
        leftover = _PAIR.sub("", line).strip()
        if leftover:
            raise AppError(f"cannot parse config {leftover!r}: expected key=value pairs such as "
                           "'lr=0.1 epochs=2 name=\"x\" flag=true'")
        try:
            parsed.update(tomllib.loads("\n".join(f"{k} = {v}" for k, v in pairs)))
        except tomllib.TOMLDecodeError as exc:
            raise AppError(f"invalid config {line!r}: {exc}; values are TOML: numbers, true/"
                           "false, or quoted strings") from None
    return _flatten(parsed)


def fuse_config(defaults: UserConfig, overrides: UserConfig) -> UserConfig:
    """The app's run config with overrides applied; an unknown key is an error, as in Flower."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise AppError(f"run config has no key {unknown[0]!r} (known: "
                       f"{', '.join(sorted(defaults)) or 'none'})")
    return {**defaults, **overrides}


def node_config(config: str | Sequence[str] | None, partition_id: int,
                num_partitions: int) -> UserConfig:
    """A node's `context.node_config`: the explicit `--node-config` if given, else the node's
    place in the federation as Flower's simulation gives it."""
    explicit = parse_config(config)
    return explicit or {"partition-id": partition_id, "num-partitions": num_partitions}


@dataclass(frozen=True)
class FlowerApp:
    root: Path
    name: str
    serverapp: str  # "module:attribute"
    clientapp: str
    config: UserConfig  # the run config defaults, flattened
    dependencies: tuple[str, ...] = ()  # [project] dependencies' names, normalised

    def run_config(self, overrides: str | Sequence[str] | None = None) -> UserConfig:
        return fuse_config(self.config, parse_config(overrides))

    def load_server_app(self) -> Any:
        from flwr.serverapp import ServerApp

        return self._load(self.serverapp, ServerApp)

    def load_client_app(self) -> Any:
        from flwr.clientapp import ClientApp

        return self._load(self.clientapp, ClientApp)

    def unload(self) -> None:
        """Forget this app's modules and take its directory off `sys.path`, so the next run's
        app may use the same module names; objects already loaded keep working."""
        prefix = str(self.root) + os.sep
        with _import_lock:
            while str(self.root) in sys.path:
                sys.path.remove(str(self.root))
            for name, module in list(sys.modules.items()):
                if any(place.startswith(prefix) for place in _places(module)):
                    del sys.modules[name]

    def _load(self, ref: str, kind: type) -> Any:
        module_name, _, attrs = ref.partition(":")
        with _import_lock:
            if str(self.root) not in sys.path:
                sys.path.insert(0, str(self.root))
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001 - any import failure is the app's
                raise AppError(f"cannot import {module_name} from {self.root}: "
                               f"{type(exc).__name__}: {exc}") from exc
        origin = Path(getattr(module, "__file__", "") or "").resolve()
        if not origin.is_relative_to(self.root):
            raise AppError(f"module {module_name} is already loaded from {origin}, not from "
                           f"{self.root}: one process hosts one app per module name")
        obj: Any = module
        for attr in attrs.split("."):
            obj = getattr(obj, attr, None)
        if not isinstance(obj, kind):
            raise AppError(f"{ref} in {self.root} is not a {kind.__name__}")
        return obj


def _places(module: Any) -> list[str]:
    """Where a module was loaded from: its file, or a namespace package's directories (none
    for a module that does not say, or whose attributes raise)."""
    try:
        spec = getattr(module, "__spec__", None)
        places = [getattr(module, "__file__", None), getattr(spec, "origin", None)]
        locations = getattr(spec, "submodule_search_locations", None)
        if isinstance(locations, list) or type(locations).__name__ == "_NamespacePath":
            places += list(locations)
    except Exception:  # noqa: BLE001 - a module with odd attributes is not the app's
        return []
    return [p for p in places if isinstance(p, str)]


def load_app(path: str | Path) -> FlowerApp:
    """Read `path/pyproject.toml`; the modules are imported only by `load_*_app`."""
    root = Path(path).expanduser().resolve()
    project = root / "pyproject.toml"
    try:
        doc = tomllib.loads(project.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppError(f"not a Flower app directory: cannot read {project}: {exc}") from None
    app = doc.get("tool", {}).get("flwr", {}).get("app", {})
    components = app.get("components", {}) if isinstance(app, dict) else {}
    refs = {}
    for role in ("serverapp", "clientapp"):
        ref = components.get(role) if isinstance(components, dict) else None
        if not isinstance(ref, str) or not _REF.match(ref):
            raise AppError(f"{project}: [tool.flwr.app.components] {role} must be "
                           f"\"module:attribute\", got {ref!r}")
        refs[role] = ref
    config = app.get("config", {})
    if not isinstance(config, dict):
        raise AppError(f"{project}: [tool.flwr.app.config] must be a table")
    project_table = doc.get("project", {})
    name = project_table.get("name", root.name)
    return FlowerApp(root, str(name), refs["serverapp"], refs["clientapp"], _flatten(config),
                     _dependency_names(project_table.get("dependencies")))


def _dependency_names(requirements: Any) -> tuple[str, ...]:
    """The distribution names of PEP 508 requirement strings, normalised (PEP 503)."""
    if not isinstance(requirements, list):
        return ()
    names = (_REQUIREMENT_NAME.match(r) for r in requirements if isinstance(r, str))
    return tuple(re.sub(r"[-_.]+", "-", m[0].strip()).lower() for m in names if m)
