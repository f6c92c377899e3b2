"""Bridges to other trainers: write what they need to run a stage of a cascade (``cascade export TARGET STAGE``).

Each target is a module here (:mod:`cascade.export.openrlhf`); the files it writes reach the cascade's domains only
through the plugin manager, so any plugin's environment and reward run under the other trainer unchanged.
"""
