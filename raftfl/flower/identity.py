"""The process's Flower task identity: the ONE private Flower symbol raftfl touches.

Flower 1.42.0 builds every instruction `Message(content, dst_node_id, message_type)` from a
process-wide `TaskIdentity` (run id, node id, task id) and raises
"TaskIdentity.run_id is not set" until Flower's own runtime sets it. Flower exposes no public
way to set it: its `flwr-serverapp` process, its simulation and its legacy `start_grid` all
assign it directly, as here. Strategies such as FedAvg construct Messages themselves, so a
ServerApp hosted in-process on a public `Grid` cannot run without it.

Kept to this module so it is one line to remove when Flower offers a public way (the values
are placeholders: `RaftGrid` sets the run id and source node of every message it sends).
"""

from __future__ import annotations

SERVER_NODE_ID = 1  # Flower's SUPERLINK_NODE_ID: the source of every instruction message


def adopt_server_identity(run_id: int) -> None:
    """Let Flower's Message constructor work in this process, as Flower's own runtimes do."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SERVER_NODE_ID
