"""Hydra config groups shipped with cascade-rl (``pkg://cascade.conf``); plugins add their own."""
