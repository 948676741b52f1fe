import pytest

from server.errors import ContextLengthExceededError
from server.protocol.chat import ChatCompletionRequest
from server.services.sampling import completion_budget, sampling_params
from server.settings import SamplingDefaults


def test_request_fields_override_model_defaults() -> None:
    request = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "x"}], temperature=0, seed=7
    )
    params = sampling_params(request, SamplingDefaults(temperature=0.5, top_k=12))
    assert params.temperature == 0
    assert params.top_k == 12
    assert params.seed == 7


def test_budget_defaults_to_the_rest_of_the_context() -> None:
    assert completion_budget(None, None, 100, 1024, param="prompt") == 924


def test_budget_uses_model_default_when_request_is_silent() -> None:
    assert completion_budget(None, 50, 100, 1024, param="prompt") == 50


def test_explicit_max_tokens_must_fit_beside_the_prompt() -> None:
    with pytest.raises(ContextLengthExceededError) as info:
        completion_budget(1000, None, 100, 1024, param="prompt")
    assert info.value.param == "max_tokens"


def test_prompt_filling_the_context_is_rejected() -> None:
    with pytest.raises(ContextLengthExceededError) as info:
        completion_budget(None, None, 1024, 1024, param="messages")
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"
