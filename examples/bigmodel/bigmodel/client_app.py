"""The ClientApp: one gradient step on a fresh synthetic batch per round."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bigmodel import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    seed = int(msg.content["config"]["server-round"]) * 1000 + int(
        context.node_config.get("partition-id", 0))
    x, y = task.batch(context.run_config, seed)
    arrays, loss = task.step(msg.content["arrays"], x, y,
                             float(context.run_config["learning-rate"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
