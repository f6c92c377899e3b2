"""A toy domain for testing the runner: the "model" is a lookup table that learns sums mod 10.

Every part is real cascade machinery (a stage type, an environment, a reward, model creation and
evaluation hooks, config presets on a search path); only the model is a table, so a cascade of several
stages runs in a second and its scores are exactly reproducible.
"""
