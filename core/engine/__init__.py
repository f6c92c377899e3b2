"""The training engine: policies, rollouts, the trainer, SFT and GRPO stages, evaluation."""
