"""cascade-rlhf: the RLHF domain of cascade-rl (a learnt reward model, a pairwise judge, a gold rubric)."""
