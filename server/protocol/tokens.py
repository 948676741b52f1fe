"""Wire types of POST /tokenize and POST /detokenize (not OpenAI's: vLLM and llama-server
have the same utilities)."""

from __future__ import annotations

from pydantic import Field

from server.protocol.common import OpenAIRequest, OpenAIResponse


class TokenizeRequest(OpenAIRequest):
    model: str
    text: str = Field(..., description="The text to split into the model's tokens.")
    add_special: bool = Field(
        True, description="Add the model's start-of-text token, as a completion prompt would."
    )


class TokenizeResponse(OpenAIResponse):
    model: str
    tokens: list[int]
    count: int
    max_model_len: int = Field(..., description="The model's context length per sequence.")


class DetokenizeRequest(OpenAIRequest):
    model: str
    tokens: list[int] = Field(..., description="Token ids to turn back into text.")


class DetokenizeResponse(OpenAIResponse):
    model: str
    text: str
