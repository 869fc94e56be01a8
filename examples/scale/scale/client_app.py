"""The ClientApp: one step towards a target every worker shares, on the arrays it was sent."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"]["w"].numpy()
    lr = float(context.run_config["learning-rate"])
    w = (w + lr * (1.0 - w)).astype(np.float32)  # the shared optimum is all ones
    loss = float(np.mean((1.0 - w) ** 2))
    metrics = MetricRecord({"train_loss": loss, "num-examples": 1})
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "metrics": metrics}),
                   reply_to=msg)
