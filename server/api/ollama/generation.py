"""POST /api/chat and POST /api/generate: Ollama's generation routes over the one pipeline.

Streams are NDJSON (Ollama's default; ``"stream": false`` gives one object). The last object
has ``done: true``, the ``done_reason`` and Ollama's counters, durations in nanoseconds:
``load_duration`` is the time spent loading the model for this request (0 when it was loaded),
``prompt_eval_duration`` the time from queueing to the first token (queue wait and prefill),
``eval_duration`` the rest.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from server.api.deps import State, context_of
from server.api.ndjson import ndjson_response
from server.api.ollama import convert
from server.api.ollama.template import render
from server.api.openapi_errors import OLLAMA_GENERATION_RESPONSES
from server.api.runner import local_model, serve
from server.errors import UnsupportedFeatureError
from server.protocol.ollama import ChatRequest, GenerateRequest, GenerationFields
from server.services.generation import (
    Caller,
    Run,
    check_finish,
    normal_finish,
    released_on_error,
)
from server.services.spec import GenerationSpec, Turn
from server.services.tools import ParsedCall, arguments_object
from server.state import AppState

router = APIRouter(tags=["ollama"])


@router.post("/api/chat", response_model=None, responses=OLLAMA_GENERATION_RESPONSES)
async def chat(body: ChatRequest, request: Request, state: State) -> Any:
    if not body.messages:  # Ollama's way to load (or, with keep_alive 0, unload) a model
        return await _load_only(body, request, state, {"message": _message("")})
    return await serve(ChatAdapter(body, state), request, state)


@router.post("/api/generate", response_model=None, responses=OLLAMA_GENERATION_RESPONSES)
async def generate(body: GenerateRequest, request: Request, state: State) -> Any:
    if body.images:
        raise UnsupportedFeatureError(
            "images: the models Hearth serves read text only", param="images"
        )
    if body.suffix:
        raise UnsupportedFeatureError(
            "suffix (fill-in-the-middle) is not supported", param="suffix"
        )
    if not body.prompt and body.template is None:
        return await _load_only(body, request, state, {"response": ""})
    return await serve(GenerateAdapter(body, state), request, state)


async def _load_only(
    body: GenerationFields, request: Request, state: AppState, empty: dict[str, Any]
) -> dict[str, Any]:
    started = time.monotonic()
    key = context_of(request).api_key
    config = state.registry.resolve(body.model)
    may_shorten = key is None or key.admin
    # keep_alive 0 unloads, when this caller may shorten it and the model is not pinned.
    unloading = body.keep_alive_seconds == 0 and may_shorten and not config.pin
    name = config.name
    if not (unloading and not state.registry.is_loaded(name)):  # never load just to unload
        lease = await state.registry.checkout(
            body.model, keep_alive=body.keep_alive_seconds, may_shorten=may_shorten
        )
        lease.release()
    context_of(request).model = name
    return {
        "model": name,
        "created_at": convert.now_iso(),
        **empty,
        "done": True,
        "done_reason": "unload" if unloading else "load",
        "total_duration": convert.monotonic_ns_since(started),
    }


def _message(
    content: str, thinking: str = "", calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


def _call(call: ParsedCall | tuple[str, str]) -> dict[str, Any]:
    name, arguments = (call.name, call.arguments) if isinstance(call, ParsedCall) else call
    return {"function": {"name": name, "arguments": arguments_object(arguments)}}


class _OllamaAdapter:
    """What chat and generate share: timing, the final object, the NDJSON response."""

    def __init__(self, body: GenerationFields, state: AppState) -> None:
        self.body = body
        self.state = state
        self.started = time.monotonic()
        self.load_seconds = 0.0

    @property
    def stream(self) -> bool:
        return self.body.stream

    @property
    def user(self) -> str | None:
        return None

    async def _timed(self, prepare: Callable[[], Awaitable[Run]]) -> Run:
        """Prepare, noting the time spent loading the model if it was not loaded."""
        name = local_model(self.state, self.body.model, "/api/*").name
        was_loaded = self.state.registry.is_loaded(name)
        began = time.monotonic()
        run = await prepare()
        if not was_loaded:
            self.load_seconds = time.monotonic() - began
        return run

    def spec_fields(self) -> dict[str, Any]:
        body = self.body
        options = body.options
        return {
            "model": body.model,
            "max_tokens": convert.max_tokens(options),
            "clamp_max_tokens": True,
            "context_limit": options.num_ctx if options is not None else None,
            "sampling": convert.sampling(options),
            "output": convert.output_format(body.format),
            "keep_alive": body.keep_alive_seconds,
        }

    def final(self, run: Run, finish: str) -> dict[str, Any]:
        usage = run.usage()
        now = time.monotonic()
        first = run.first_token_at or now
        return {
            "done": True,
            "done_reason": finish,
            "total_duration": convert.nanoseconds(now - self.started),
            "load_duration": convert.nanoseconds(self.load_seconds),
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": convert.nanoseconds(first - run.started),
            "eval_count": usage.completion_tokens,
            "eval_duration": convert.nanoseconds(now - first),
        }

    def head(self, run: Run) -> dict[str, Any]:
        return {"model": run.model, "created_at": convert.now_iso()}

    def stream_response(self, run: Run, on_close: Callable[[], None]) -> Response:
        return ndjson_response(self.lines(run), on_close=on_close)

    def lines(self, run: Run) -> AsyncGenerator[dict[str, Any], None]:
        raise NotImplementedError


class ChatAdapter(_OllamaAdapter):
    body: ChatRequest

    async def prepare(self, caller: Caller) -> Run:
        return await self._timed(lambda: self.state.chat.prepare(self.spec(), caller))

    def spec(self) -> GenerationSpec:
        body = self.body
        tools = convert.function_tools(body.tools)
        choice = convert.tool_choice(body.tool_choice)
        return GenerationSpec(
            messages=tuple(convert.turns(body.messages)),
            tools=tools,
            tool_choice=choice if tools else None,
            template_kwargs=convert.template_kwargs(body),
            **self.spec_fields(),
        )

    async def answer(self, run: Run) -> dict[str, Any]:
        (answer,) = await self.state.chat.answers(run)
        calls = [_call(c) for c in answer.calls]
        message = _message(answer.content or "", answer.reasoning or "", calls)
        finish = normal_finish(answer.finish_reason)
        return {**self.head(run), "message": message, **self.final(run, finish)}

    async def lines(self, run: Run) -> AsyncGenerator[dict[str, Any], None]:
        finish = "stop"
        pending: list[list[str]] = []  # calls being written: [name, arguments]

        def calls_done() -> dict[str, Any]:
            done = [_call((name, arguments)) for name, arguments in pending]
            pending.clear()
            return {**self.head(run), "message": _message("", calls=done), "done": False}

        async for piece in self.state.chat.events(run):
            if piece.content or piece.reasoning:
                message = _message(piece.content, piece.reasoning)
                yield {**self.head(run), "message": message, "done": False}
            for delta in piece.calls:
                if delta.id is not None and pending:
                    yield calls_done()  # Ollama sends each call whole
                if delta.id is not None:
                    pending.append([delta.name or "", ""])
                if delta.arguments and pending:
                    pending[-1][1] += delta.arguments
            if piece.finish_reason is not None:
                finish = normal_finish(piece.finish_reason)
        if pending and finish == "length":
            # The last call was cut off by the length: not sent, as a whole answer drops it.
            pending.pop()
        if pending:
            yield calls_done()
        yield {**self.head(run), "message": _message(""), **self.final(run, finish)}


class GenerateAdapter(_OllamaAdapter):
    body: GenerateRequest

    def __init__(self, body: GenerateRequest, state: AppState) -> None:
        super().__init__(body, state)
        # Whether the prompt goes through the model's chat template (else it is text as is).
        self.as_chat = False

    async def prepare(self, caller: Caller) -> Run:
        return await self._timed(lambda: self._prepare(caller))

    async def _prepare(self, caller: Caller) -> Run:
        body = self.body
        fields = self.spec_fields()  # every value checked before a model is loaded
        kwargs = convert.template_kwargs(body)
        if body.context:
            # Hearth reuses the KV cache by prefix: send the conversation again instead.
            raise UnsupportedFeatureError(
                "context is not supported; send the whole prompt (its cached prefix is reused)",
                param="context",
            )
        # Checked out once, here: whether the prompt goes through the chat template depends
        # on the loaded model (a base model has none).
        lease = await self.state.registry.checkout(
            body.model,
            keep_alive=body.keep_alive_seconds,
            may_shorten=caller.may_shorten_keep_alive,
        )
        with released_on_error(lease) as handle:
            if body.raw or body.template is not None or handle.chat_template_source is None:
                spec = self._prompt_spec(fields)
                return await self.state.completions.prepare(spec, caller, lease)
            self.as_chat = True
            turns = (
                *((Turn("system", body.system),) if body.system else ()),
                Turn("user", body.prompt),
            )
            spec = GenerationSpec(messages=turns, template_kwargs=kwargs, **fields)
            return await self.state.chat.prepare(spec, caller, lease)

    def _prompt_spec(self, fields: dict[str, Any]) -> GenerationSpec:
        """The prompt as text: raw as sent, through ``template``, or, for a base model (no
        chat template), after the system prompt."""
        body = self.body
        system = body.system or ""
        if body.template is not None:
            limit = self.state.settings.max_body_bytes
            prompt = render(body.template, system=system, prompt=body.prompt, max_chars=limit)
        elif body.raw or not system:
            prompt = body.prompt
        else:
            prompt = f"{system}\n\n{body.prompt}"
        # A raw prompt, or one through a template, is written in the model's own markup,
        # special tokens included (that is what Ollama's templates are for).
        markup = body.raw or body.template is not None
        return GenerationSpec(prompt=prompt, parse_special=markup, **fields)

    async def answer(self, run: Run) -> dict[str, Any]:
        if not self.as_chat:
            (result,) = await run.results()
            finish = normal_finish(result.finish_reason)
            return {**self.head(run), "response": result.text, **self.final(run, finish)}
        (answer,) = await self.state.chat.answers(run)
        finish = normal_finish(answer.finish_reason)
        extra = {"thinking": answer.reasoning} if answer.reasoning else {}
        return {
            **self.head(run),
            "response": answer.content or "",
            **extra,
            **self.final(run, finish),
        }

    async def lines(self, run: Run) -> AsyncGenerator[dict[str, Any], None]:
        finish = "stop"
        if self.as_chat:
            async for piece in self.state.chat.events(run):
                if piece.content or piece.reasoning:
                    extra = {"thinking": piece.reasoning} if piece.reasoning else {}
                    yield {**self.head(run), "response": piece.content, **extra, "done": False}
                if piece.finish_reason is not None:
                    finish = normal_finish(piece.finish_reason)
        else:
            async for _, event in run.events():
                if event.text:
                    yield {**self.head(run), "response": event.text, "done": False}
                if event.finish_reason is not None:
                    check_finish(event)
                    finish = normal_finish(event.finish_reason)
        yield {**self.head(run), "response": "", **self.final(run, finish)}
