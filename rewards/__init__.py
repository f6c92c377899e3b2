"""Reward functions and verifiers shared by cascade domains.

Verifiers judge model output, which is untrusted: anything that may hang or crash
(symbolic math, code execution) runs through `cascade.rewards.isolated`, which puts
each call in a child process with a hard wall-clock timeout.
"""
