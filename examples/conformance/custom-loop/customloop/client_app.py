"""customloop: the ClientApp. Trains the shard the instruction names, on the arrays it carries."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from customloop import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    x, y = task.shard_data(int(context.run_config["seed"]), int(config["shard"]),
                           int(context.run_config["examples-per-shard"]))
    arrays, loss = task.train(msg.content["arrays"].to_numpy_ndarrays(), x, y,
                              int(context.run_config["local-steps"]), float(config["lr"]))
    metrics = MetricRecord({"train_loss": loss, "train_acc": task.accuracy(arrays, x, y),
                            "num-examples": len(y), "shard": int(config["shard"])})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)
