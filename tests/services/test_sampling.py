import pytest

from server.errors import ContextLengthExceededError
from server.models.config import SamplingDefaults
from server.services.sampling import completion_budget, sampling_params
from server.services.spec import Sampling


def test_request_fields_override_model_defaults() -> None:
    params = sampling_params(
        Sampling(temperature=0, seed=7), SamplingDefaults(temperature=0.5, top_k=12)
    )
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


def test_caps_lower_the_budget_whatever_is_asked() -> None:
    assert completion_budget(500, None, 100, 1024, param="prompt", caps=(64, None)) == 64
    assert completion_budget(None, None, 100, 1024, param="prompt", caps=(None, 32)) == 32
    assert completion_budget(10, None, 100, 1024, param="prompt", caps=(64, 32)) == 10


def test_keep_alive_durations() -> None:
    from server.protocol.common import parse_keep_alive

    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("90s") == 90
    assert parse_keep_alive("1h") == 3600
    assert parse_keep_alive(-1) == -1
    assert parse_keep_alive("0") == 0
    assert parse_keep_alive(None) is None
    with pytest.raises(ValueError):
        parse_keep_alive("soon")
