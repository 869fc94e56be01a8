"""The ClientApp: train and evaluate on this node's partition (Flower's quickstart shape)."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart import task

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition_id, num_partitions = _partition(context)
    trainset, _ = task.load_data(partition_id, num_partitions, context.run_config)
    config = msg.content["config"]
    arrays, train_loss = task.train(
        msg.content["arrays"], trainset,
        epochs=int(context.run_config["local-epochs"]), lr=float(config["lr"]),
        batch_size=int(context.run_config["batch-size"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # sent by FedProx
        seed=int(config["server-round"]) * 1000 + partition_id)
    metrics = MetricRecord({"train_loss": train_loss, "num-examples": len(trainset)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    partition_id, num_partitions = _partition(context)
    _, testset = task.load_data(partition_id, num_partitions, context.run_config)
    loss, accuracy = task.test(msg.content["arrays"], testset)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(testset)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
