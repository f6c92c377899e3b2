"""Rule-based verifiers of checkable instructions (the IFEval vocabulary), for IF-RL rewards.

* :mod:`.instructions`: the ``Instruction`` classes, their registry by id (``INSTRUCTION_DICT``,
  ``register_instruction``, ``build_instruction``);
* :mod:`.evaluation`: strict/loose checking of a response and binary or fractional scores;
* :mod:`.util`: thinking removal, the regex sentence splitter, word counts, language heuristic.

Pure Python, no downloads, fast: checks run in-process (no isolation needed; every regex here is
linear on its input).
"""

from cascade.rewards.ifeval.evaluation import MODES, FollowResult, check_response, loose_variants, score_response
from cascade.rewards.ifeval.instructions import (
    INSTRUCTION_DICT,
    LANGUAGES,
    RELATIONS,
    Instruction,
    build_instruction,
    register_instruction,
)
from cascade.rewards.ifeval.util import count_sentences, count_words, detect_language, split_sentences, strip_thinking

__all__ = [
    "INSTRUCTION_DICT", "LANGUAGES", "MODES", "RELATIONS", "FollowResult", "Instruction", "build_instruction",
    "check_response", "count_sentences", "count_words", "detect_language", "loose_variants",
    "register_instruction", "score_response", "split_sentences", "strip_thinking",
]
