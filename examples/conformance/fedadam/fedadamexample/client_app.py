"""fedadamexample: A Flower / PyTorch app (Flower's quickstart-pytorch ClientApp)."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedadamexample.task import Net, load_data
from fedadamexample.task import test as test_fn
from fedadamexample.task import train as train_fn

# Flower ClientApp
app = ClientApp()


def _loaders(context: Context, shuffle_seed: int = 0) -> tuple:
    cfg = context.run_config
    return load_data(int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]), int(cfg["batch-size"]),
                     int(cfg["examples-per-node"]), int(cfg["seed"]), shuffle_seed)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the model on local data."""

    # Load the model and initialize it with the received weights
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())

    # Load the data; shuffle as this round and partition always do (deterministic training)
    config = msg.content["config"]
    partition_id = int(context.node_config["partition-id"])
    trainloader, _ = _loaders(context, int(config["server-round"]) * 1000 + partition_id)

    # Call the training function
    train_loss = train_fn(model, trainloader, int(context.run_config["local-epochs"]),
                          float(config["lr"]))

    # Construct and return reply Message
    model_record = ArrayRecord(model.state_dict())
    metrics = {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
    content = RecordDict({"arrays": model_record, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the model on local data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, valloader = _loaders(context)
    eval_loss, eval_acc = test_fn(model, valloader)
    metrics = {"eval_loss": eval_loss, "eval_acc": eval_acc,
               "num-examples": len(valloader.dataset)}
    content = RecordDict({"metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
