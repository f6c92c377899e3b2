"""Console, JSONL and wandb loggers for cascade-rl."""
