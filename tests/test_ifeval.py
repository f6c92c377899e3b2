"""The IFEval-style verifiers of cascade.rewards.ifeval: every instruction on both sides of its rule,
adversarial cases, the sentence splitter, the language heuristic, strict/loose modes and scoring."""

from __future__ import annotations

import pytest

from cascade.rewards.ifeval import (
    INSTRUCTION_DICT,
    Instruction,
    build_instruction,
    check_response,
    count_words,
    detect_language,
    register_instruction,
    score_response,
    split_sentences,
    strip_thinking,
)

IFEVAL_IDS = {
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language", "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    "combination:repeat_prompt", "startend:end_checker", "startend:quotation",
    "change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
    "punctuation:no_comma",
}

# (instruction id, kwargs, response, expected)
CASES = [
    # keywords:existence - whole words, any case
    ("keywords:existence", {"keywords": ["sun", "sea"]}, "The Sun shines on the sea.", True),
    ("keywords:existence", {"keywords": ["sun", "sea"]}, "The sun shines.", False),
    ("keywords:existence", {"keywords": ["cat"]}, "A category of concatenated things.", False),
    ("keywords:existence", {"keywords": ["cat"]}, "My cat's toy.", True),
    ("keywords:existence", {"keywords": ["ice cream"]}, "I like ice cream!", True),
    ("keywords:existence", {"keywords": ["c++"]}, "I write C++ daily.", True),
    # keywords:frequency
    ("keywords:frequency", {"keyword": "dog", "frequency": 2, "relation": "at least"}, "Dog and dog.", True),
    ("keywords:frequency", {"keyword": "dog", "frequency": 2, "relation": "at least"}, "A dog and doghouse dogs.", False),
    ("keywords:frequency", {"keyword": "dog", "frequency": 2, "relation": "less than"}, "One dog.", True),
    ("keywords:frequency", {"keyword": "dog", "frequency": 2, "relation": "less than"}, "dog DOG", False),
    # keywords:forbidden_words
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "A badge is fine.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "That is BAD.", False),
    # keywords:letter_frequency
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zebra zoo", True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zebra", False),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "less than"}, "banana", False),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "less than"}, "band", True),
    # language:response_language
    ("language:response_language", {"language": "en"}, "The weather is nice and it is warm.", True),
    ("language:response_language", {"language": "en"}, "El tiempo es muy bueno y hace calor.", False),
    ("language:response_language", {"language": "es"}, "El tiempo es muy bueno y hace calor.", True),
    ("language:response_language", {"language": "fr"}, "Le temps est très beau et il fait chaud.", True),
    ("language:response_language", {"language": "de"}, "Das Wetter ist sehr schön und es ist warm.", True),
    ("language:response_language", {"language": "ru"}, "Погода сегодня хорошая.", True),
    ("language:response_language", {"language": "ru"}, "The weather is good.", False),
    ("language:response_language", {"language": "ja"}, "今日はいい天気ですね。", True),
    ("language:response_language", {"language": "zh"}, "今天天气很好。", True),
    # length_constraints:number_sentences
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, "One. Two! Three?", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, "Mr. Smith paid 3.5 dollars. Then left.", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Only one sentence here.", True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "First one. Second one.", False),
    # length_constraints:number_paragraphs
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n\nSecond.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "A.\n***\n***\nB.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nA.\n***\nB.\n***", True),
    # length_constraints:number_words
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "hi there", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "don't stop", False),
    # length_constraints:nth_paragraph_first_word
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Hello there.\n\nThen, we go.", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Hello there.\n\nThereafter we go.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Hello.\n\nThen we go.\n\nMore.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 3, "nth_paragraph": 3, "first_word": "then"},
     "Hello.\n\nThen we go.", False),
    # detectable_content:number_placeholders
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Go to [address] with [name].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Go to [address] now.", False),
    # detectable_content:postscript
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\np. s. bye", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi there.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "I like maps.s. and more", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S bye", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.S. bye", False),
    # detectable_format:number_bullet_lists
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- one\n* two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n* three", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "**bold** line\n* one", False),
    # detectable_format:constrained_response
    ("detectable_format:constrained_response", {}, "My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "  My answer is maybe. Because.", True),
    ("detectable_format:constrained_response", {}, "My answer is yes", False),
    ("detectable_format:constrained_response", {}, "Yes.", False),
    # detectable_format:number_highlighted_sections
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *one* and *two*.", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *one* and **two**.", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *one* and ** **.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "A *broken\nline*.", False),
    # detectable_format:multiple_sections
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nA.\nSection 2\nB.", True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nA.\nSection two\nB.", False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 1}, "Section 1\nA.", False),
    # detectable_format:json_format
    ("detectable_format:json_format", {}, '{"a": 1}', True),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', True),
    ("detectable_format:json_format", {}, '{"a": 1} and that is it', False),
    ("detectable_format:json_format", {}, 'Here it is: {"a": 1}', False),
    ("detectable_format:json_format", {}, "{'a': 1}", False),
    # detectable_format:title
    ("detectable_format:title", {}, "<<My Title>>\nText.", True),
    ("detectable_format:title", {}, "<< >>\nText.", False),
    ("detectable_format:title", {}, "<My Title>\nText.", False),
    ("detectable_format:title", {}, "<<broken\ntitle>>", False),
    # combination:two_responses
    ("combination:two_responses", {}, "First.\n******\nSecond.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:two_responses", {}, "One.\n******\nTwo.\n******\nThree.", False),
    ("combination:two_responses", {}, "Only one.", False),
    # combination:repeat_prompt
    ("combination:repeat_prompt", {"prompt_to_repeat": "Describe the sea."}, "describe the sea.\nIt is blue.", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Describe the sea."}, "Sure! Describe the sea.", False),
    # startend:end_checker
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Done. any other questions?"', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    # startend:quotation
    ("startend:quotation", {}, '"Wrapped."', True),
    ("startend:quotation", {}, '"Not wrapped.', False),
    ("startend:quotation", {}, '"', False),
    # change_case:capital_word_frequency
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "THIS is VERY good", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "This is Very good", False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "ONE word only", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "ONE TWO", False),
    # change_case:english_capital / english_lowercase
    ("change_case:english_capital", {}, "THE SKY IS BLUE.", True),
    ("change_case:english_capital", {}, "THE SKY IS Blue.", False),
    ("change_case:english_capital", {}, "EL CIELO ES MUY AZUL Y LA CASA ES GRANDE.", False),
    ("change_case:english_lowercase", {}, "the sky is blue.", True),
    ("change_case:english_lowercase", {}, "the sky is Blue.", False),
    ("change_case:english_lowercase", {}, "123 456", False),
    # punctuation:no_comma
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "One, two.", False),
    ("punctuation:no_comma", {}, "全角，逗号", False),
]


def test_registry_holds_the_ifeval_vocabulary():
    assert IFEVAL_IDS <= set(INSTRUCTION_DICT)
    assert {case[0] for case in CASES} == IFEVAL_IDS  # every instruction is tested below


@pytest.mark.parametrize("instruction_id,kwargs,response,expected", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction(instruction_id, kwargs, response, expected):
    checker = build_instruction(instruction_id)
    description = checker.build_description(**kwargs)
    assert isinstance(description, str) and description
    assert set(kwargs) <= set(checker.get_instruction_args())
    assert checker.check_following(response) is expected


@pytest.mark.parametrize("instruction_id", sorted(IFEVAL_IDS - {"combination:repeat_prompt"}))
def test_every_instruction_builds_with_defaults(instruction_id):
    checker = build_instruction(instruction_id)
    assert checker.build_description()
    assert set(checker.get_instruction_args()) == set(checker.get_instruction_args_keys())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        build_instruction("keywords:frequency", relation="at most")
    with pytest.raises(TypeError):
        build_instruction("keywords:existence", keyword=["x"])  # the key is `keywords`
    with pytest.raises(KeyError, match="unknown instruction"):
        build_instruction("no:such")
    with pytest.raises(ValueError):
        build_instruction("combination:repeat_prompt").build_description()
    # None values (as in the IFEval data rows) fall back to the defaults
    checker = build_instruction("keywords:frequency")
    checker.build_description(keyword="dog", frequency=None, relation=None)
    assert checker.get_instruction_args() == {"keyword": "dog", "frequency": 1, "relation": "at least"}


def test_plugins_can_register_instructions():
    class StartsWithHello(Instruction):
        defaults = {}

        def describe(self):
            return "Start with hello."

        def check_following(self, value):
            return value.lower().startswith("hello")

    try:
        register_instruction("test:starts_with_hello", StartsWithHello)
        register_instruction("test:starts_with_hello", StartsWithHello)  # same class again: fine
        assert check_response("Hello you.", ["test:starts_with_hello"]).follow_all
        assert not check_response("Hi.", ["test:starts_with_hello"]).follow_all
        with pytest.raises(ValueError, match="already registered"):
            register_instruction("test:starts_with_hello", type("Other", (StartsWithHello,), {}))
        with pytest.raises(TypeError):
            register_instruction("test:not_a_class", object)
        decorated = register_instruction("test:decorated", replace=True)(StartsWithHello)
        assert decorated is StartsWithHello
    finally:
        INSTRUCTION_DICT.pop("test:starts_with_hello", None)
        INSTRUCTION_DICT.pop("test:decorated", None)


@pytest.mark.parametrize("text,expected", [
    ("One. Two. Three.", ["One.", "Two.", "Three."]),
    ("Hi! How are you? Fine...", ["Hi!", "How are you?", "Fine..."]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("Pi is 3.14 today. Yes.", ["Pi is 3.14 today.", "Yes."]),
    ("Use e.g. apples, i.e. fruit. Done.", ["Use e.g. apples, i.e. fruit.", "Done."]),
    ("Visit example.com now. Then rest.", ["Visit example.com now.", "Then rest."]),
    ("J. Smith wrote it. The U.S. is big.", ["J. Smith wrote it.", "The U.S. is big."]),
    ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
    ("It ends with no stop", ["It ends with no stop"]),
    ("<<Title>>\n* item one\n* item two", ["<<Title>>", "* item one", "* item two"]),
    ("lowercase after. stays together", ["lowercase after. stays together"]),
    ("Really?! Yes.", ["Really?!", "Yes."]),
    ("", []),
])
def test_sentence_splitter(text, expected):
    assert split_sentences(text) == expected


def test_words_and_language():
    assert count_words("Don't stop, 2 go!") == 5  # don / t / stop / 2 / go, as the reference counts
    assert detect_language("HELLO WORLD") == "en"
    assert detect_language("12345 !!") == "unknown"
    assert detect_language("Ich bin sehr müde und es ist spät.") == "de"
    assert detect_language("Je suis très fatigué et il est tard.") == "fr"
    assert detect_language("Sono molto stanco e non è tardi.") == "it"
    assert detect_language("Eu estou muito cansado e não é tarde.") == "pt"
    assert detect_language("안녕하세요") == "ko"


def test_thinking_is_stripped_before_checking():
    assert strip_thinking("<think>a, b</think>no commas") == "no commas"
    assert strip_thinking("<think>still thinking, and cut") == ""
    assert strip_thinking("plain") == "plain"
    assert check_response("<think>Let me think, ok.</think>no commas here", ["punctuation:no_comma"]).follow_all
    assert not check_response("<think>no comma yet", ["punctuation:no_comma"]).follow_all  # nothing answered
    assert not check_response("<think>x</think>a, b", ["punctuation:no_comma"]).follow_all
    # a keyword said only while thinking does not count
    assert not check_response("<think>ocean</think>The sea.", ["keywords:existence"], [{"keywords": ["ocean"]}]).follow_all


def test_strict_and_loose_modes():
    response = "Sure, here it is:\n<<sea>>\n*the sea is blue*"
    ids, kwargs = ["punctuation:no_comma", "change_case:english_lowercase"], [None, None]
    assert check_response(response, ids, kwargs, mode="strict").follow_list == [False, False]
    # loose: drop the first line -> no comma, and lowercase
    assert check_response(response, ids, kwargs, mode="loose").follow_list == [True, True]
    # loose removes asterisks: a JSON answer wrapped in *...* passes loose only
    assert not check_response('*{"a": 1}*', ["detectable_format:json_format"]).follow_all
    assert check_response('*{"a": 1}*', ["detectable_format:json_format"], mode="loose").follow_all
    # loose: a trailing remark after the end phrase is forgiven
    end = [{"end_phrase": "That is all."}]
    assert not check_response("Text. That is all.\nBye!", ["startend:end_checker"], end).follow_all
    assert check_response("Text. That is all.\nBye!", ["startend:end_checker"], end, mode="loose").follow_all
    with pytest.raises(ValueError):
        check_response("x", ["punctuation:no_comma"], mode="lenient")


def test_binary_and_fractional_scores():
    constraints = {"instruction_id_list": ["punctuation:no_comma", "detectable_format:title", "startend:quotation"],
                   "kwargs": [{}, {}, {}], "prompt": "Write."}
    assert score_response("<<T>>\nall good", constraints)[0] == 0.0
    assert score_response("<<T>>\nall good", constraints, fractional=True)[0] == pytest.approx(2 / 3)
    assert score_response('"<<T>>\nall good"', constraints)[0] == 1.0
    assert score_response('"<<T>>\nall, good"', constraints, fractional=True)[0] == pytest.approx(2 / 3)
    assert score_response("", constraints, fractional=True)[0] == 0.0
    # repeat_prompt takes the row's prompt when its kwargs do not say
    row = {"instruction_id_list": ["combination:repeat_prompt"], "kwargs": [{"prompt_to_repeat": None}],
           "prompt": "Say hi."}
    assert score_response("Say hi. Hi!", row)[0] == 1.0
    assert score_response("Hi!", row)[0] == 0.0
