"""Config presets (domain/, stage/, cascade/), found by Hydra as ``pkg://cascade_wordplay.conf``."""
