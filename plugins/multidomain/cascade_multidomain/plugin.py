"""Multi-domain RL domains, registered through the ``cascade`` entry-point group like any third-party plugin.

Environments ``mcq``, ``structured``, ``workplace``; rewards ``mcq_match``, ``json_schema``, ``db_state``;
config presets ``domain=mcq|structured|workplace`` and ``stage=multidomain_rl``.
"""

from __future__ import annotations

from cascade import hookimpl
from cascade_multidomain.mcq import MCQEnvironment, MCQMatchReward
from cascade_multidomain.structured import JsonSchemaReward, StructuredEnvironment
from cascade_multidomain.workplace import DbStateReward, WorkplaceEnvironment


@hookimpl
def cascade_environments():
    return {"mcq": MCQEnvironment, "structured": StructuredEnvironment, "workplace": WorkplaceEnvironment}


@hookimpl
def cascade_rewards():
    return {"mcq_match": MCQMatchReward, "json_schema": JsonSchemaReward, "db_state": DbStateReward}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_multidomain.conf"]
