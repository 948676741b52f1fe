"""The think-tag split, exact however the output is cut into pieces."""

from __future__ import annotations

import pytest

from server.services.formats.families import gemma, harmony
from server.services.reasoning import (
    THINK_TAGS,
    Markers,
    ThinkSplitter,
    opens_thinking,
    reasoning_markers,
    uses_think_tags,
)


def split(text: str, *, thinking: bool, step: int) -> tuple[str, str]:
    splitter = ThinkSplitter(thinking=thinking)
    reasoning, content = "", ""
    for i in range(0, len(text), step):
        r, c = splitter.feed(text[i : i + step])
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c


@pytest.mark.parametrize("step", [1, 2, 3, 5, 100])
@pytest.mark.parametrize(
    ("text", "thinking", "expected"),
    [
        ("<think>Let me see.</think>\n\nIt is 4.", False, ("Let me see.", "It is 4.")),
        ("  <think>a < b</think>yes", False, ("a < b", "yes")),
        (
            "Plain answer, no <think> at the start.",
            False,
            ("", "Plain answer, no <think> at the start."),
        ),
        ("<thin", False, ("", "<thin")),  # never became a tag
        ("I think 2+2 is 4.</think>\nFour.", True, ("I think 2+2 is 4.", "Four.")),
        ("Still thinking </thi", True, ("Still thinking </thi", "")),  # cut off by the limit
        ("x</think>", True, ("x", "")),
    ],
)
def test_the_split_is_exact_whatever_the_pieces(
    text: str, thinking: bool, expected: tuple[str, str], step: int
) -> None:
    assert split(text, thinking=thinking, step=step) == expected


def test_which_models_and_prompts_think() -> None:
    template = "{{ '<|im_start|>assistant\\n<think>\\n' }} ... </think>"
    assert uses_think_tags("auto", template)
    assert not uses_think_tags("auto", "{{ messages }}")
    assert uses_think_tags("think_tags", None) and not uses_think_tags("none", template)
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n")


HARMONY = harmony.FAMILY.reasoning
GEMMA = gemma.FAMILY.reasoning
assert HARMONY is not None and GEMMA is not None


@pytest.mark.parametrize("step", [1, 2, 7, 100])
@pytest.mark.parametrize(
    ("markers", "text", "thinking", "expected"),
    [
        (Markers("[THINK]", "[/THINK]"), "[THINK]a [b][/THINK]Yes.", False, ("a [b]", "Yes.")),
        (Markers("[THINK]", "[/THINK]"), "hmm[/THINK]\nNo.", True, ("hmm", "No.")),
        (
            Markers("<seed:think>", "</seed:think>"),
            "<seed:think>x</seed:think>y",
            False,
            ("x", "y"),
        ),
        (
            Markers("<|START_THINKING|>", "<|END_THINKING|>"),
            "<|START_THINKING|>plan<|END_THINKING|>done",
            False,
            ("plan", "done"),
        ),
        (
            HARMONY,
            "<|channel|>analysis<|message|>Think.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Answer.",
            False,
            ("Think.", "Answer."),
        ),
        (HARMONY, "<|channel|>final<|message|>Just the answer.", False, ("", "Just the answer.")),
        (
            HARMONY,
            "<|channel|>analysis<|message|>Call it.<|end|><|start|>assistant"
            "<|channel|>commentary to=functions.f<|channel|>commentary json<|message|>{}",
            False,
            ("Call it.", " to=functions.f<|channel|>commentary json<|message|>{}"),
        ),
        (HARMONY, "<|channel|>commentar", False, ("", "<|channel|>commentar")),
        (
            GEMMA,
            "<|channel>thought\nSunny?<channel|>It is sunny.",
            False,
            ("Sunny?", "It is sunny."),
        ),
    ],
)
def test_each_familys_markers_split_exactly(
    markers: Markers, text: str, thinking: bool, expected: tuple[str, str], step: int
) -> None:
    splitter = ThinkSplitter(thinking=thinking, markers=markers)
    reasoning, content = "", ""
    for i in range(0, len(text), step):
        r, c = splitter.feed(text[i : i + step])
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    assert (reasoning + r, content + c) == expected


def test_a_familys_markers_are_used_where_its_template_writes_them() -> None:
    mistral = Markers("[THINK]", "[/THINK]")
    source = "{{ '[THINK]' }}{{ m.thinking }}{{ '[/THINK]' }}"
    assert reasoning_markers("auto", source, mistral) == mistral
    assert reasoning_markers("auto", "<think></think>", mistral) == THINK_TAGS
    assert reasoning_markers("auto", "{{ messages }}", mistral) is None
    assert reasoning_markers("think_tags", source, mistral) == THINK_TAGS
    assert reasoning_markers("none", source, mistral) is None
    assert opens_thinking("<s>[INST]q[/INST][THINK]", mistral)
