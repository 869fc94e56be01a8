"""`node start|join --config FILE` and `--print-config`: the file's keys, how it merges with
flags, the round trip, and the one-line errors (no etcd, no node process)."""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from raftfl import cli as raftfl_cli
from raftfl import tls
from raftfl.cli import cli
from raftfl.cli.config_file import NOT_IN_FILES, file_keys, toml_value
from raftfl.cli.node_cmd import node_join, node_start
from raftfl.cli.node_options import build_options

pytestmark = pytest.mark.unit

NODE_FILE = """\
# node-a
self = "127.0.0.1:5000"
nodes = ["127.0.0.1:5001", "127.0.0.1:5002"]
aggregator = "self"
rounds = 3
lease-ttl = 5
priority = 2
exit-on-complete = true
data-dir = "/var/lib/raftfl"
dataset = "synthetic"
"""


def _print_config(args: list[str], command: str = "start") -> str:
    result = CliRunner().invoke(cli, ["node", command, *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return result.output


def _effective(args: list[str], command: str = "start") -> dict[str, Any]:
    return tomllib.loads(_print_config(args, command))


def _write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_option_of_both_commands_has_a_key_named_after_its_long_flag() -> None:
    for command in (node_start, node_join):
        keys = file_keys(command)
        options = [p for p in command.params if isinstance(p, click.Option)]
        longs = {o[2:] for p in options for o in p.opts if o.startswith("--")}
        assert set(keys) == longs - set(NOT_IN_FILES)
        assert keys["self"].name == "address" and keys["lease-ttl"].name == "lease_ttl"
    assert {"join-timeout", "fresh"} <= set(file_keys(node_join)) - set(file_keys(node_start))


def test_the_file_sets_the_flags_and_the_command_line_wins(tmp_path: Path) -> None:
    path = _write(tmp_path, NODE_FILE)
    from_file = _effective(["--config", str(path)])
    assert from_file["self"] == "127.0.0.1:5000"
    assert from_file["nodes"] == ["127.0.0.1:5001", "127.0.0.1:5002"]
    assert (from_file["aggregator"], from_file["rounds"], from_file["lease-ttl"]) == ("self", 3, 5)
    assert (from_file["priority"], from_file["exit-on-complete"]) == (2.0, True)
    assert from_file["data-dir"] == "/var/lib/raftfl"
    assert from_file["rank-step"] == 1.0  # not in the file: the flag's default
    assert "train-size" not in from_file  # unset (None) stays unset
    overridden = _effective(["--lease-ttl", "7", "-n", "127.0.0.1:5009", "--config", str(path),
                             "-s", "127.0.0.1:6000"])
    assert (overridden["lease-ttl"], overridden["self"]) == (7, "127.0.0.1:6000")
    assert overridden["nodes"] == ["127.0.0.1:5009"]  # a list on the command line replaces it
    assert overridden["rounds"] == 3


def test_print_config_fed_back_gives_the_same_configuration(tmp_path: Path) -> None:
    flags = ["-a", "self", "-r", "2", "-s", "localhost:5000", "-n", "localhost:5001",
             "localhost:5002", "--lease-ttl", "4", "--run-config", 'strategy="fedprox" x=1',
             "--weights", "rtt=2,cpu=0.5", "--dataset", "synthetic", "--exit-on-complete",
             "--max-update-norm", "12.5", "--log-format", "json"]
    printed = _print_config(flags)
    path = _write(tmp_path, printed)
    assert _print_config(["--config", str(path)]) == printed
    assert tomllib.loads(printed)["run-config"] == 'strategy="fedprox" x=1'
    joined = _print_config([*flags, "--join-timeout", "9"], "join")  # join's own flags too
    assert tomllib.loads(joined)["join-timeout"] == 9.0
    assert _print_config(["--config", str(_write(tmp_path, joined, "j.toml"))], "join") == joined


def test_a_node_from_a_file_gets_the_options_of_the_same_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import raftfl.cli.node_cmd

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # node start sets them
    built: list[Any] = []

    class Built(Exception):
        pass

    def build(*args: Any, **kw: Any) -> None:
        built.append(build_options(*args, **kw))
        raise Built

    monkeypatch.setattr(raftfl.cli.node_cmd, "build_options", build)
    path = _write(tmp_path, NODE_FILE)
    flags = ["-s", "127.0.0.1:5000", "-n", "127.0.0.1:5001", "127.0.0.1:5002", "-a", "self",
             "-r", "3", "--lease-ttl", "5", "--priority", "2", "--exit-on-complete",
             "--data-dir", "/var/lib/raftfl", "--dataset", "synthetic"]
    for args in (flags, ["--config", str(path)]):
        result = CliRunner().invoke(cli, ["node", "start", *args])
        assert isinstance(result.exception, Built), result.output
    same_time = [replace(o, first_run=replace(o.first_run, created=0.0)) for o in built]
    assert same_time[0] == same_time[1]
    assert (built[1].lease_ttl, built[1].bootstrap, built[1].first_run.rounds) == (5, "self", 3)


def test_certs_from_the_file_are_loaded_and_printed(tmp_path: Path) -> None:
    tls.init_ca(tmp_path / "ca", "prod")
    bundle = tls.issue_bundle(tmp_path / "ca", "node", "127.0.0.1:5000", ["127.0.0.1"])
    path = _write(tmp_path, f'self = "127.0.0.1:5000"\ncerts = "{bundle}"\n')
    try:
        assert _effective(["--config", str(path)])["certs"] == str(bundle)
        assert tls.current() is not None  # the eager --certs callback ran on the file's value
    finally:
        tls.configure(None)


@pytest.mark.parametrize("text, line", [
    ('self = "h:0"\nlease-ttl = "x"\n',
     'node.toml line 2: lease-ttl: expected an integer, got "x"'),
    ('self = "h:0"\n\nleese-ttl = 3\n',
     "node.toml line 3: leese-ttl: unknown key (did you mean lease-ttl?)"),
    ('self = "h:0"\nlease-ttl = 5\nrounds = x\n',
     "node.toml line 3: TOML syntax error: invalid value (column 10)"),
    ('self = "h:0"\nlease-ttl = 5\nlease-ttl = 6\n',
     "node.toml line 3: TOML syntax error: cannot overwrite a value (column 14)"),
    ("lease-ttl = 61\n", "node.toml line 1: lease-ttl: 61 is not in the range 2<=x<=60"),
    ('nodes = "h:1"\n', 'node.toml line 1: nodes: expected a list of strings, got "h:1"'),
    ('nodes = ["h:1", 2]\n', 'node.toml line 1: nodes: expected a list of strings, got ["h:1", 2]'),
    ("insecure = 1\n", "node.toml line 1: insecure: expected true or false, got 1"),
    ("priority = true\n", "node.toml line 1: priority: expected a number, got true"),
    ('dataset = "mnist"\n',
     "node.toml line 1: dataset: 'mnist' is not one of 'auto', 'cifar10', 'synthetic'"),
    ("[lease-ttl]\nx = 1\n", "node.toml line 1: lease-ttl: expected an integer, got a table"),
    ('print-config = true\n', "node.toml line 1: print-config: a flag of the command line only"),
])
def test_a_bad_file_is_one_line_and_exit_2(text: str, line: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, text)
    assert _error(tmp_path, monkeypatch, capsys) == f"raftfl: error: {line}\n"


def test_a_file_that_is_not_utf8_is_one_line_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "node.toml").write_bytes(b'self = "\xff"\n')
    assert _error(tmp_path, monkeypatch, capsys) == "raftfl: error: node.toml: not UTF-8 text\n"


def _error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of `raftfl node start --config node.toml`, which must exit 2 and print nothing else."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["raftfl", "node", "start", "--config", "node.toml"])
    with pytest.raises(SystemExit) as exit_:
        raftfl_cli.main()
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


@pytest.mark.parametrize("value", ["plain", 'quo"te', "back\\slash", "new\nline", "tab\t",
                                   "del\x7f", "ünïcødé", "", 'k=v x="y z"'])
def test_strings_are_written_as_toml_reads_them(value: str) -> None:
    assert tomllib.loads(f"k = {toml_value(value)}")["k"] == value


def test_other_values_are_written_as_toml_reads_them() -> None:
    for value in (0, -3, 2.5, 1e-05, True, False, ["a", "b"], []):
        assert tomllib.loads(f"k = {toml_value(value)}")["k"] == value
    assert tomllib.loads(f"k = {toml_value(('a', Path('/x')))}")["k"] == ["a", "/x"]


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["node-a", "node-b", "node-c"])
def test_the_deploy_examples_are_valid_config_files(name: str) -> None:
    path = DEPLOY / "example" / f"{name}.toml"
    effective = _effective(["--config", str(path), "--data-dir", "/var/lib/raftfl"])
    assert effective["self"] == f"10.0.0.{'abc'.index(name[-1]) + 1}:5000"
    assert len(effective["nodes"]) == 2 and effective["self"] not in effective["nodes"]
    assert effective["cluster"] == "prod" and effective["data-dir"] == "/var/lib/raftfl"


def test_the_systemd_unit_runs_node_start_from_the_config_file() -> None:
    unit = (DEPLOY / "raftfl-node.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.replace("\\\n", " ").splitlines()
                    if "=" in line and not line.startswith("#"))
    command = settings["ExecStart"].split()
    assert command[1:3] == ["node", "start"]
    assert {"--config", "--data-dir", "--certs"} <= set(command)
    assert set(c for c in command if c.startswith("--")) <= {
        o for p in node_start.params for o in p.opts}
    assert settings["Restart"] == "on-failure" and settings["KillSignal"] in ("SIGINT", "SIGTERM")
    assert settings["KillMode"] == "mixed" and settings["User"] == "raftfl"
