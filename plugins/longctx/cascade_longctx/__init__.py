"""cascade-longctx: the long-context RL domain of cascade-rl (RULER-style generated tasks)."""
