"""Wire types of POST /tokenize and POST /detokenize (not OpenAI's: vLLM and llama-server
have the same utilities)."""

from __future__ import annotations

from pydantic import Field, model_validator

from server.protocol.chat import ChatMessage, Tool
from server.protocol.common import OpenAIRequest, OpenAIResponse


class TokenizeRequest(OpenAIRequest):
    """Either ``text``, or a chat's ``messages`` (and ``tools``) rendered through the model's
    chat template exactly as ``/v1/chat/completions`` renders them (vLLM's form)."""

    model: str
    text: str | None = Field(None, description="The text to split into the model's tokens.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="A conversation, rendered with the chat template."
    )
    tools: list[Tool] | None = Field(None, description="Tools offered with `messages`.")
    add_generation_prompt: bool = Field(
        True, description="With `messages`: end with the start of the assistant's turn."
    )
    add_special: bool = Field(
        True, description="Add the model's start-of-text token, as a completion prompt would."
    )
    parse_special: bool = Field(
        False,
        description="Read special-token text (`<|im_start|>`) in `text` as control tokens, as "
        "a completion with `parse_special` does; off, all of it is plain text.",
    )

    @model_validator(mode="after")
    def _text_or_messages(self) -> TokenizeRequest:
        if (self.text is None) == (self.messages is None):
            raise ValueError("send exactly one of `text` and `messages`")
        return self


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
