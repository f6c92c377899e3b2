"""A plugin that kills its own process (SIGKILL, like `kill -9`) right after a chosen training step.

Set ``CASCADE_CRASH_AT=STAGE:STEP`` and load it with ``CASCADE_PLUGINS=cascade_crash``: any stage that
logs through the context can then be interrupted at any step, with no test code inside the stage.
"""

import os
import signal

from cascade import hookimpl


@hookimpl
def cascade_step_end(stage, step):
    if os.environ.get("CASCADE_CRASH_AT") == f"{stage.name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
