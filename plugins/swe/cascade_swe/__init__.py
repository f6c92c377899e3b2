"""cascade-swe: SWE RL domains (agentless patches and agentic repository work) for cascade-rl."""
