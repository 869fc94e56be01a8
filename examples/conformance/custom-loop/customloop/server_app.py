"""customloop: a ServerApp with its own `@app.main()` loop: no strategy, FedAvg by hand.

Each round sends shard i (0 .. shards-1) to the i-th connected node with
`grid.send_and_receive`, sends a shard again (to a node that answered or the next one) while
it has no good reply, and averages the replies by shard. Progress goes to `context.state`
("progress": the last round done and its arrays' digest); the last line logged names the
final arrays' sha256 (task.arrays_sha256), so two runs can be compared by their logs.
"""

import time
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from customloop import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    num_rounds, shards = int(cfg["num-server-rounds"]), int(cfg["shards"])
    arrays = task.initial_arrays(int(cfg["seed"]))
    for server_round in range(1, num_rounds + 1):
        results = train_round(grid, arrays, server_round, shards, float(cfg["learning-rate"]),
                              int(cfg["max-attempts"]))
        arrays = task.fedavg([results[shard] for shard in range(shards)])
        digest = task.arrays_sha256(arrays)
        context.state["progress"] = ConfigRecord({"round": server_round, "sha256": digest})
        log(INFO, "custom-loop round %d of %d done: arrays %s", server_round, num_rounds,
            digest[:12])
    log(INFO, "custom-loop final arrays sha256 %s", task.arrays_sha256(arrays))


def train_round(grid: Grid, arrays: list, server_round: int, shards: int, lr: float,
                max_attempts: int) -> dict[int, tuple[list, int]]:
    """Every shard's (arrays, num-examples), each from one good reply."""
    results: dict[int, tuple[list, int]] = {}
    for attempt in range(1, max_attempts + 1):
        missing = [shard for shard in range(shards) if shard not in results]
        if not missing:
            break
        nodes = wait_for_nodes(grid, len(missing))
        messages = [
            Message(RecordDict({"arrays": ArrayRecord(arrays),
                                "config": ConfigRecord({"lr": lr, "shard": shard,
                                                        "server-round": server_round})}),
                    message_type=MessageType.TRAIN, dst_node_id=node)
            for shard, node in zip(missing, nodes, strict=True)
        ]
        for reply in grid.send_and_receive(messages):
            if reply.has_error():
                log(WARNING, "round %d attempt %d: node %s replied with an error: %s",
                    server_round, attempt, reply.metadata.src_node_id, reply.error.reason)
                continue
            metrics = reply.content["metrics"]
            results[int(metrics["shard"])] = (reply.content["arrays"].to_numpy_ndarrays(),
                                              int(metrics["num-examples"]))
    if len(results) < shards:
        raise RuntimeError(f"round {server_round}: shards {sorted(set(range(shards)) - set(results))}"
                           f" unanswered after {max_attempts} attempts")
    return results


def wait_for_nodes(grid: Grid, count: int) -> list[int]:
    """The first `count` connected nodes (by id), once that many are connected."""
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes[:count]
        time.sleep(0.5)
