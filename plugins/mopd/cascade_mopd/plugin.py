"""Registers the ``mopd`` stage wrapper and its config presets."""

from cascade import hookimpl


@hookimpl
def cascade_stage_wrappers():
    from cascade_mopd.stage import wrap

    return {"mopd": wrap}


@hookimpl
def cascade_config_searchpaths():
    return ["pkg://cascade_mopd.conf"]
