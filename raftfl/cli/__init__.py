"""The `raftfl` command line (click). Heavy imports happen inside commands, so it starts fast.

Every user-facing failure is one line on stderr and a non-zero exit: 2 for bad usage,
1 for everything else. Installed packages add commands through the `raftfl.commands` entry
points (the lab: demo, faults, soak, bench); they are absent when their extra is not installed.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points

import click

from raftfl import __version__
from raftfl.cli.certs_cmd import certs_group
from raftfl.cli.control_cmd import aggregator_group, pause, resume
from raftfl.cli.inspect_cmd import history, status
from raftfl.cli.node_cmd import FAULT_HOOKS, node_group
from raftfl.cli.run_cmd import run_group
from raftfl.cli.worker_cmd import worker
from raftfl.core.errors import RaftflError
from raftfl.node.faults import NO_FAULTS, FaultHooks

COMMANDS_GROUP = "raftfl.commands"  # entry points: register(group: click.Group) -> None


class _Root(click.Group):
    """The `raftfl` group: its own commands, and those that `raftfl.commands` entry points
    add when a command is first looked up (not at import: the lab imports this package)."""

    _installed = False

    def _add_installed(self) -> None:
        """One whose imports fail (its extra is not installed) adds none."""
        if self._installed:
            return
        self._installed = True
        for entry_point in entry_points(group=COMMANDS_GROUP):
            try:
                entry_point.load()(self)
            except ImportError:
                continue

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_installed()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_installed()
        return super().list_commands(ctx)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="raftfl")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for Flower's too).")
def cli(verbose: int) -> None:
    """raftfl: federated learning whose aggregator heals itself, on etcd."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _command in (node_group, status, history, run_group, aggregator_group, pause, resume,
                 certs_group, worker):
    cli.add_command(_command)


def main(fault_hooks: FaultHooks = NO_FAULTS) -> None:
    """Entry point: one-line errors, exit 2 for usage and 1 for runtime problems.

    `fault_hooks` reach the node that `node start` or `node join` runs (the lab's launcher,
    raftfl.lab.node, passes its own); the `raftfl` command runs without any."""
    try:
        cli.main(standalone_mode=False, obj={FAULT_HOOKS: fault_hooks})
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"raftfl: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"raftfl: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except RaftflError as exc:
        click.echo(f"raftfl: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug (one line, the traceback with -v), or
        if _permission_denied(exc):  # etcd's answer to a certificate without the right role
            click.echo("raftfl: error: etcd refused: permission denied (this certificate's user "
                       "has no role for it; see raftfl certs rbac)", err=True)
            sys.exit(1)
        _internal(exc)


def _permission_denied(exc: BaseException) -> bool:
    if "grpc" not in sys.modules:  # imported only by the commands that talk to etcd
        return False
    import grpc

    return isinstance(exc, grpc.RpcError) and \
        exc.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def _internal(exc: BaseException) -> None:
    """A bug: one line, the traceback with -v."""
    logging.getLogger("raftfl").debug("traceback", exc_info=exc)
    if logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("raftfl").error("unexpected error", exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    click.echo(f"raftfl: internal error: {type(exc).__name__}: {first} (-v for details)", err=True)
    sys.exit(1)
