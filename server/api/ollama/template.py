"""The part of Ollama's prompt templates (Go's text/template) that /api/generate's
``template`` field is used for: ``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``
(where the answer begins: the rest is left out), ``{{ if .System }}...{{ else }}...{{ end }}``
(and ``.Prompt``), and the ``{{-``/``-}}`` whitespace trims. Anything else in a template is a
400 that names it: Hearth does not run Go templates, and guessing would send the model a
prompt nobody wrote.

A template is client input: it is scanned once from left to right (no regular expression that
could backtrack), it may be at most :data:`MAX_TEMPLATE_CHARS` long, and the prompt it renders
at most ``max_chars``, checked before each piece is added, so that a template repeating
``{{ .Prompt }}`` cannot multiply a long prompt into gigabytes.
"""

from __future__ import annotations

from server.errors import InvalidRequestError, UnsupportedFeatureError
from server.models.ollama_template import actions

MAX_TEMPLATE_CHARS = 64 * 1024
_MAX_DEPTH = 16
_FIELDS = {".System": "System", ".Prompt": "Prompt"}
_CONDITIONS = {"if .System": "System", "if .Prompt": "Prompt"}


def render(template: str, *, system: str, prompt: str, max_chars: int) -> str:
    """``template`` with the request's system prompt and prompt in their places."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise InvalidRequestError(
            f"template is longer than {MAX_TEMPLATE_CHARS} characters", param="template"
        )
    values = {"System": system, "Prompt": prompt}
    out: list[str] = []
    size = 0
    # Each open {{ if }}: whether the text around it is written, and whether it had an else.
    stack: list[tuple[bool, bool]] = []
    writing = True

    def write(text: str) -> None:
        nonlocal size
        size += len(text)
        if size > max_chars:
            raise InvalidRequestError(
                f"the rendered template is longer than {max_chars} characters", param="template"
            )
        out.append(text)

    try:
        for text, action in actions(template):
            if writing:
                write(text)
            if action is None:
                break
            if action == ".Response":
                if writing:  # the answer starts here
                    return "".join(out)
            elif action in _FIELDS:
                if writing:
                    write(values[_FIELDS[action]])
            elif action in _CONDITIONS:
                if len(stack) >= _MAX_DEPTH:
                    raise _unsupported(f"more than {_MAX_DEPTH} nested ifs")
                stack.append((writing, False))
                writing = writing and bool(values[_CONDITIONS[action]])
            elif action == "else" and stack and not stack[-1][1]:
                outer, _ = stack[-1]
                stack[-1] = (outer, True)
                writing = outer and not writing
            elif action == "end" and stack:
                writing, _ = stack.pop()
            else:
                raise _unsupported(f"{{{{ {action[:40]} }}}}")
    except ValueError as exc:  # a {{ without its }}
        raise _unsupported(str(exc)) from None
    if stack:
        raise _unsupported("an {{ if }} without its {{ end }}")
    return "".join(out)


def _unsupported(what: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"template: {what} is not supported; Hearth renders .System, .Prompt, .Response, "
        "if/else/end on .System or .Prompt, and {{- -}} trims",
        param="template",
    )
