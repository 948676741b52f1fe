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


def test_sandbox_is_immutable() -> None:
    template = ChatTemplate("{{ messages.append(1) }}")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])


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
