"""cascade-code: the code RL domain of cascade-rl."""
