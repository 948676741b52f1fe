from typing import Any

import pytest

from server.errors import ChatTemplateError, UnsupportedFeatureError
from server.services.templates import ChatTemplate, message_to_template_dict

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_renders_chatml_with_generation_prompt() -> None:
    template = ChatTemplate(CHATML)
    text = template.render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_generation_prompt_can_be_left_out() -> None:
    text = ChatTemplate(CHATML).render(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=False
    )
    assert not text.endswith("assistant\n")


def test_special_tokens_are_available_to_the_template() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert template.render([{"role": "user", "content": "x"}]) == "<s>x</s>"


def test_raise_exception_in_template_is_a_400_error() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="first must be user") as info:
        template.render([{"role": "assistant", "content": "x"}])
    assert info.value.status_code == 400


def test_sandbox_blocks_python_internals() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])


def test_a_template_mutates_its_own_copy_never_the_callers_messages() -> None:
    template = ChatTemplate(
        "{% do messages.append({'role': 'x'}) %}{% do messages[0].update(content='changed') %}"
        "{{ messages|length }} {{ messages[0].content }}"
    )
    messages = [{"role": "user", "content": "x"}]
    assert template.render(messages) == "2 changed"
    assert messages == [{"role": "user", "content": "x"}]


def test_tools_stay_undefined_without_tools() -> None:
    # As llama.cpp leaves them: tool-use templates loop over `tools` unguarded.
    template = ChatTemplate("{% for tool in tools %}{{ tool }}{% endfor %}{{ tools is defined }}")
    assert template.render([]) == "False"
    assert template.render([], tools=[{"name": "f"}]) == "{'name': 'f'}True"


def test_arguments_go_as_text_to_a_template_that_concatenates_them() -> None:
    template = ChatTemplate(
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ c.function.name + ' ' + c.function.arguments }}{% endfor %}{% endfor %}{{ tools }}"
    )
    call = {"type": "function", "function": {"name": "f", "arguments": {"a": "é"}}}
    messages: list[dict[str, Any]] = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    assert template.arguments_as_text
    assert template.render(messages, tools=[]).startswith('f {"a": "é"}')
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"a": "é"}


def test_arguments_stay_a_dict_for_a_template_that_reads_them() -> None:
    template = ChatTemplate(
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ c.function.arguments.a }}{% endfor %}{% endfor %}{{ tools }}"
    )
    assert not template.arguments_as_text


def test_a_template_error_names_its_kind_and_line() -> None:
    template = ChatTemplate("line one\n{{ messages[5].content }}")
    with pytest.raises(ChatTemplateError, match=r"UndefinedError: .*\(template line 2\)"):
        template.render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("{{ messages[0]['content'] + 1 }}", "TypeError"),
        ("{{ '{0}{1}'.format('a') }}", "IndexError"),
        ("{{ (messages|first).x.y }}", "UndefinedError"),
        ("{{ 1 // 0 }}", "ZeroDivisionError"),
        ("{{ '' | from_json }}", "JSONDecodeError"),
        ("{{ messages.pop(7) }}", "IndexError"),
        ("{{ {}.pop('k') }}", "KeyError"),
        ("{{ 'a'.index('b') }}", "ValueError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ],
)
def test_every_failure_in_a_render_is_a_400(source: str, kind: str) -> None:
    with pytest.raises(ChatTemplateError, match=kind) as info:
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
    assert info.value.status_code == 400


def test_a_template_too_deep_to_compile_is_a_400() -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")


def test_invalid_template_syntax_is_reported() -> None:
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        ChatTemplate("{% for %}")


def test_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    message = message_to_template_dict("user", parts, {"name": None})
    assert message == {"role": "user", "content": "Hello there"}


def test_non_text_parts_are_refused() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    with pytest.raises(UnsupportedFeatureError):
        message_to_template_dict("user", parts, {})


def test_null_content_becomes_empty_and_extras_are_kept() -> None:
    message = message_to_template_dict("tool", None, {"tool_call_id": "call_1", "name": None})
    assert message == {"role": "tool", "content": "", "tool_call_id": "call_1"}
