"""cascade-if: the instruction-following (IF-RL) domain of cascade-rl."""
