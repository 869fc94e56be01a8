"""Flower app directories and Flower's `--run-config` / `--node-config` syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftfl.flower.app import AppError, fuse_config, load_app, node_config, parse_config

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

PARSED = [
    ("", {}),
    (None, {}),
    ("num-server-rounds=5", {"num-server-rounds": 5}),
    ("lr=0.1 epochs=2", {"lr": 0.1, "epochs": 2}),
    ('name="a b" flag=true off=false', {"name": "a b", "flag": True, "off": False}),
    ("name='single quoted'", {"name": "single quoted"}),
    ("partition-id=0 num-partitions=3", {"partition-id": 0, "num-partitions": 3}),
    ("x=1e-3 big=1_000", {"x": 0.001, "big": 1000}),
    ("a.b=1 a.c=2", {"a.b": 1, "a.c": 2}),  # dotted keys flatten like nested tables
    (["lr=0.1", "epochs=2"], {"lr": 0.1, "epochs": 2}),  # repeated flags
    (["lr=0.1", "lr=0.2"], {"lr": 0.2}),  # a later flag overrides an earlier one
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_config(text: object, expected: dict) -> None:
    result = parse_config(text)  # type: ignore[arg-type]
    assert result == expected
    assert all(type(result[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize("text", ["lr", "lr=", "name=unquoted words", "x=[1,2]",
                                  "d=1979-05-27", "t={a=1}x", "a.toml b=1",
                                  "lr=0.1 lr=0.2"])
def test_bad_config_is_one_app_error(text: str) -> None:
    with pytest.raises(AppError) as info:
        parse_config(text)
    assert "\n" not in str(info.value)


def test_config_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "over.toml"
    path.write_text('lr = 0.5\n[data]\nname = "x"\n')
    assert parse_config(str(path)) == {"lr": 0.5, "data.name": "x"}
    with pytest.raises(AppError, match="cannot read config file"):
        parse_config(str(tmp_path / "missing.toml"))


def test_fuse_config_only_overrides_known_keys() -> None:
    assert fuse_config({"a": 1, "b": "x"}, {"a": 2}) == {"a": 2, "b": "x"}
    with pytest.raises(AppError, match="no key 'c'"):
        fuse_config({"a": 1}, {"c": 2})


def test_node_config_explicit_or_derived() -> None:
    assert node_config(None, 1, 3) == {"partition-id": 1, "num-partitions": 3}
    assert node_config("partition-id=2 num-partitions=5 gpu=false", 0, 3) == {
        "partition-id": 2, "num-partitions": 5, "gpu": False}


def test_quickstart_app_loads() -> None:
    app = load_app(QUICKSTART)
    assert (app.serverapp, app.clientapp) == ("quickstart.server_app:app",
                                              "quickstart.client_app:app")
    assert app.config["num-server-rounds"] == 3 and app.config["strategy"] == "fedavg"
    run_config = app.run_config('num-server-rounds=4 strategy="fedprox"')
    assert (run_config["num-server-rounds"], run_config["strategy"]) == (4, "fedprox")
    with pytest.raises(AppError, match="no key 'rounds'"):
        app.run_config("rounds=4")


def _write_app(root: Path, pyproject: str, modules: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(pyproject)
    for name, text in (modules or {}).items():
        (root / f"{name}.py").write_text(text)
    return root


COMPONENTS = '[tool.flwr.app.components]\nserverapp = "{s}"\nclientapp = "{c}"\n'

@pytest.mark.parametrize("dependencies, names", [
    ('["flwr[simulation]==1.42.0", "torch==2.14.1", "Torch_Vision >= 0.2"]',
     ("flwr", "torch", "torch-vision")),
    ('["numpy; python_version >= \'3.9\'", "  raftfl"]', ("numpy", "raftfl")),
    ('"torch"', ()),  # not a list: none (a node warms nothing up for it)
    ('[3, "torch"]', ("torch",)),
])
def test_dependency_names(tmp_path: Path, dependencies: str, names: tuple[str, ...]) -> None:
    """The names a node reads to import heavy libraries before it opens its lease."""
    root = _write_app(tmp_path / "app", f"[project]\nname = 'x'\ndependencies = {dependencies}\n"
                      + COMPONENTS.format(s="m:app", c="m:app"))
    assert load_app(root).dependencies == names


def test_the_bundled_app_depends_on_torch_and_the_scale_app_does_not() -> None:
    assert "torch" in load_app(QUICKSTART).dependencies
    assert "torch" not in load_app(QUICKSTART.parent / "scale").dependencies


BAD_APPS = {
    "no pyproject": None,
    "not toml": "[[[",
    "no components": "[project]\nname = 'x'\n",
    "bad reference": COMPONENTS.format(s="server_app", c="m:app"),
    "config not a table": COMPONENTS.format(s="m:app", c="m:app") + "[tool.flwr.app]\nconfig = 3\n",
    "config value type": COMPONENTS.format(s="m:app", c="m:app")
    + "[tool.flwr.app.config]\nxs = [1, 2]\n",
}


@pytest.mark.parametrize("pyproject", BAD_APPS.values(), ids=BAD_APPS.keys())
def test_bad_app_directory_is_one_app_error(tmp_path: Path, pyproject: str | None) -> None:
    root = tmp_path / "app"
    root.mkdir()
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject)
    with pytest.raises(AppError) as info:
        load_app(root)
    assert "\n" not in str(info.value)


def test_components_that_do_not_load(tmp_path: Path) -> None:
    root = _write_app(tmp_path / "app", COMPONENTS.format(s="raftfl_t_broken:app",
                                                          c="raftfl_t_plain:app"),
                      {"raftfl_t_broken": "raise RuntimeError('boom at import')\n",
                       "raftfl_t_plain": "app = 42\n"})
    app = load_app(root)
    with pytest.raises(AppError, match="RuntimeError: boom at import"):
        app.load_server_app()
    with pytest.raises(AppError, match="is not a ClientApp"):
        app.load_client_app()
    other = _write_app(tmp_path / "other", COMPONENTS.format(s="raftfl_t_plain:app",
                                                             c="raftfl_t_plain:app"),
                       {"raftfl_t_plain": "app = 1\n"})
    with pytest.raises(AppError, match="already loaded from"):
        load_app(other).load_client_app()
