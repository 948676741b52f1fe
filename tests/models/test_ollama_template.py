"""Ollama's older prompt templates (Go's text/template, the part Hearth reads) as chat
templates: a conversation is the template's rounds one after another, the system prompt in
the first, the last round cut where the answer begins; anything else is not converted."""

from __future__ import annotations

import pytest

from server.models.ollama_template import to_jinja
from server.services.templates import ChatTemplate, message_to_template_dict

CHATML = """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""


def render(go: str, turns: list[tuple[str, str]], generation: bool = True) -> str:
    jinja = to_jinja(go)
    assert jinja is not None
    messages = [message_to_template_dict(role, text, {}) for role, text in turns]
    return ChatTemplate(jinja).render(messages, add_generation_prompt=generation)


def test_a_conversation_is_rendered_round_by_round() -> None:
    turns = [("system", "Be brief. ü 😀 \\"), ("user", 'Hi "x" {{ y }}'), ("assistant", "Hello")]
    assert render(CHATML, [*turns, ("user", "Again")]) == (
        '<|im_start|>system\nBe brief. ü 😀 \\<|im_end|>\n<|im_start|>user\nHi "x" {{ y }}'
        "<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nAgain"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    # Without a generation prompt the last round is whole.
    assert render(CHATML, turns, generation=False).endswith("Hello<|im_end|>\n")
    # No system prompt: its block is left out.
    assert render(CHATML, [("user", "Hi")]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_trims_and_else_are_kept() -> None:
    go = "{{- if .System }}S: {{ .System }}\n{{ else }}(none)\n{{ end -}}\n  U: {{ .Prompt }}\nA: {{ .Response }}</s>"
    assert render(go, [("user", "Hi")]) == "(none)\nU: Hi\nA: "
    assert render(go, [("system", "x"), ("user", "Hi")]) == "S: x\nU: Hi\nA: "


@pytest.mark.parametrize(
    "go",
    [
        "{{ range .Messages }}{{ .Content }}{{ end }}",
        "{{ if .Tools }}x{{ end }}",
        "{{ .Prompt }",
        "{{ if .System }}open",
        "{{ end }}",
        "x" * (64 * 1024 + 1),
    ],
)
def test_anything_else_is_not_converted(go: str) -> None:
    assert to_jinja(go) is None
