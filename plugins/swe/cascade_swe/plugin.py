"""SWE RL domains, registered through the ``cascade`` entry-point group like any third-party plugin.

Environments ``swe_agentless`` and ``swe_agentic``; reward ``swe_tests``; config presets
``domain=swe_agentless|swe_agentic`` and ``stage=swe_agentless|swe_agentic``.
"""

from __future__ import annotations

from cascade import hookimpl
from cascade_swe.agentic import SweAgenticEnvironment
from cascade_swe.agentless import SweAgentlessEnvironment
from cascade_swe.reward import SweTestsReward


@hookimpl
def cascade_environments():
    return {"swe_agentless": SweAgentlessEnvironment, "swe_agentic": SweAgenticEnvironment}


@hookimpl
def cascade_rewards():
    return {"swe_tests": SweTestsReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_swe.conf"]
