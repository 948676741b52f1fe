"""Earlier tool-call answers in a prompt keep the tokens the model wrote for them."""

from __future__ import annotations

from server.services.call_tokens import CallTokens, tokenize_with


def fake_tokenize(text: str, first: bool) -> list[int]:
    """One token a character (and a BOS of -1 at the prompt's start)."""
    return ([-1] if first else []) + [ord(c) for c in text]


def test_a_remembered_call_is_the_models_tokens_and_the_rest_is_split_as_before() -> None:
    memory = CallTokens()
    memory.remember("<call>", [7, 8])
    prompt = "user: hi\nassistant: <call>\ntool: sunny\nassistant: "
    tokens = tokenize_with(prompt, ["<call>"], memory, fake_tokenize)
    before = fake_tokenize("user: hi\nassistant: ", True)
    after = fake_tokenize("\ntool: sunny\nassistant: ", False)
    assert tokens == [*before, 7, 8, *after]


def test_calls_not_remembered_or_not_found_leave_the_prompt_as_it_is() -> None:
    memory = CallTokens()
    memory.remember("<other>", [1])
    prompt = "a <call> b"
    assert tokenize_with(prompt, ["<call>", "<other>"], memory, fake_tokenize) == (
        fake_tokenize(prompt, True)
    )


def test_the_memory_keeps_the_most_recently_used() -> None:
    memory = CallTokens(capacity=2)
    memory.remember("a", [1])
    memory.remember("b", [2])
    assert memory.recall("a") == (1,)
    memory.remember("c", [3])
    assert memory.recall("b") is None and memory.recall("a") == (1,)
    memory.remember("", [1])
    memory.remember("d", [])
    assert memory.recall("") is None and memory.recall("d") is None
