"""Registers the loggers by name; each is created only when enabled in config."""

from cascade import hookimpl


@hookimpl
def cascade_loggers():
    from cascade_loggers.console import ConsoleLogger
    from cascade_loggers.jsonl import JsonlLogger
    from cascade_loggers.wandb_logger import WandbLogger

    return {"console": ConsoleLogger, "jsonl": JsonlLogger, "wandb": WandbLogger}
