"""cascade-multidomain: the multi-domain RL domains of cascade-rl (MCQ, structured output, tool calling)."""
