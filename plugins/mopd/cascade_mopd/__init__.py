"""cascade-mopd: Multi-domain On-Policy Distillation (Nemotron-Cascade 2), as a stage wrapper."""
