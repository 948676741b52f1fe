"""An Ollama model's prompt template (Go's text/template), as a chat template Hearth renders.

Only the part of Go's templates that Ollama's older models use, the same part /api/generate's
``template`` takes (:mod:`server.api.ollama.template`): ``{{ .System }}``, ``{{ .Prompt }}``,
``{{ .Response }}``, ``{{ if .System }}``/``{{ if .Prompt }}`` with ``{{ else }}`` and
``{{ end }}``, and the ``{{-``/``-}}`` trims. Such a template describes one round (a system
prompt, a question, its answer); a conversation is its rounds one after another, the system
prompt in the first, and the last round's text stops where the answer begins, as Ollama
renders it. A template with anything else (``.Messages``, ``range``, tools) is not converted:
the GGUF's own chat template is used, or none.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_TEMPLATE_CHARS = 64 * 1024
_MAX_DEPTH = 16
_FIELDS = {".System": "system", ".Prompt": "prompt"}
_CONDITIONS = {"if .System": "system", "if .Prompt": "prompt"}

_LOOP = """
{%- set ns = namespace(cut=false, system='', pending=none, first=true) -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}{%- set ns.system = m.content or '' -%}
{%- elif m.role == 'user' -%}
{%- if ns.pending is not none -%}
{{- ollama_round(ns, ns.system if ns.first else '', ns.pending, '', false) -}}
{%- set ns.first = false -%}
{%- endif -%}
{%- set ns.pending = m.content or '' -%}
{%- elif m.role == 'assistant' -%}
{{- ollama_round(ns, ns.system if ns.first else '', ns.pending or '', m.content or '', false) -}}
{%- set ns.first = false -%}{%- set ns.pending = none -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt or ns.pending is not none -%}
{{- ollama_round(ns, ns.system if ns.first else '', ns.pending or '', '', add_generation_prompt) -}}
{%- endif -%}
"""


def actions(template: str) -> Iterator[tuple[str, str | None]]:
    """``template`` read once from left to right (no regular expression that could
    backtrack): the text before each ``{{ action }}`` (with the ``{{-``/``-}}`` trims done)
    and the action, then the text after the last one with None. ValueError for a ``{{``
    without its ``}}``."""
    position = 0
    trim_next = False
    while (start := template.find("{{", position)) >= 0:
        end = template.find("}}", start + 2)
        if end < 0:
            raise ValueError("a {{ without its }}")
        text = template[position:start]
        inner = template[start + 2 : end]
        if trim_next:
            text = text.lstrip()
        if inner.startswith("-"):
            text = text.rstrip()
        yield text, inner.removeprefix("-").removesuffix("-").strip()
        position, trim_next = end + 2, inner.endswith("-")
    tail = template[position:]
    yield (tail.lstrip() if trim_next else tail), None


def to_jinja(template: str) -> str | None:
    """The chat template (Jinja) that renders conversations as ``template`` does, or None when
    it uses more of Go's templates than this part."""
    if len(template) > MAX_TEMPLATE_CHARS:
        return None
    out: list[str] = []
    depth = 0
    elses: list[bool] = []  # whether each open if has had its else

    def text(piece: str) -> None:
        if piece:
            out.append("{%- if not ns.cut -%}{{- " + _literal(piece) + " -}}{%- endif -%}")

    try:
        for piece, action in actions(template):
            text(piece)
            if action is None:
                break
            if action == ".Response":
                out.append(
                    "{%- if not ns.cut -%}{{- response -}}{%- endif -%}"
                    "{%- if last -%}{%- set ns.cut = true -%}{%- endif -%}"
                )
            elif action in _FIELDS:
                out.append("{%- if not ns.cut -%}{{- " + _FIELDS[action] + " -}}{%- endif -%}")
            elif action in _CONDITIONS:
                depth += 1
                if depth > _MAX_DEPTH:
                    return None
                elses.append(False)
                out.append("{%- if " + _CONDITIONS[action] + " -%}")
            elif action == "else" and depth and not elses[-1]:
                elses[-1] = True
                out.append("{%- else -%}")
            elif action == "end" and depth:
                depth -= 1
                elses.pop()
                out.append("{%- endif -%}")
            else:
                return None
    except ValueError:
        return None
    if depth:
        return None
    body = "".join(out)
    macro = (
        "{%- macro ollama_round(ns, system, prompt, response, last) -%}" + body + "{%- endmacro -%}"
    )
    return macro + _LOOP


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal (its escapes are read as Python's unicode-escape)."""
    out = []
    for ch in text:
        if ch in '"\\' or not " " <= ch <= "~":
            out.append(f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
