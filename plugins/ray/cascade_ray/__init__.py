"""cascade-ray: rollout engines, reward workers and MOPD teachers as Ray actors the trainer drives."""
