"""The part of Ollama's prompt templates (Go's text/template) that /api/generate's
``template`` field is used for: ``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``
(where the answer begins: the rest is left out), ``{{ if .System }}...{{ else }}...{{ end }}``
(and ``.Prompt``), and the ``{{-``/``-}}`` whitespace trims. Anything else in a template is a
400 that names it: Hearth does not run Go templates, and guessing would send the model a
prompt nobody wrote."""

from __future__ import annotations

import re

from server.errors import UnsupportedFeatureError

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_FIELDS = ("System", "Prompt", "Response")
_MAX_DEPTH = 16


def render(template: str, *, system: str, prompt: str) -> str:
    """``template`` with the request's system prompt and prompt in their places."""
    values = {"System": system, "Prompt": prompt}
    out: list[str] = []
    # Each open {{ if }}: whether its branch is being written, and whether the one around it is.
    stack: list[tuple[bool, bool]] = []
    writing = True
    position = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        if writing:
            out.append(text)
        position = match.end()
        trim_next = bool(match.group(3))
        action = match.group(2)
        if action.startswith(".") and action[1:] in _FIELDS:
            if action == ".Response":
                if writing:  # the answer starts here
                    return "".join(out)
                continue
            if writing:
                out.append(values[action[1:]])
        elif action.startswith("if ") and action[3:].strip()[1:] in _FIELDS[:2]:
            if len(stack) >= _MAX_DEPTH:
                raise _unsupported("more than 16 nested ifs")
            stack.append((writing, writing))
            writing = writing and bool(values[action[3:].strip()[1:]])
        elif action == "else" and stack:
            outer, _ = stack[-1]
            writing = outer and not writing
        elif action == "end" and stack:
            writing, _ = stack.pop()
        else:
            raise _unsupported(f"{{{{ {action} }}}}")
    if stack:
        raise _unsupported("an {{ if }} without its {{ end }}")
    tail = template[position:]
    out.append(tail.lstrip() if trim_next else tail)
    return "".join(out)


def _unsupported(what: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"template: {what} is not supported; Hearth renders .System, .Prompt, .Response, "
        "if/else/end on .System or .Prompt, and {{- -}} trims",
        param="template",
    )
