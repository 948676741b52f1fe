"""What the chat-template sandbox allows (what real templates use) and how it bounds a render."""

from __future__ import annotations

import time
from typing import Any

import pytest

from server.errors import ChatTemplateError
from server.services.template_sandbox import RenderLimits
from server.services.templates import ChatTemplate

USER = [{"role": "user", "content": "x"}]
# Short enough to keep the suite fast, long enough for a loaded CI machine.
QUICK = RenderLimits(seconds=0.5)


def render(source: str, **variables: Any) -> str:
    return ChatTemplate(source).render(USER, extra=variables)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ {'a': 'é<'}|tojson }}", '{"a": "é<"}'),
        ("{{ {'a': 'é'}|tojson(ensure_ascii=True) }}", '{"a": "\\u00e9"}'),
        ("{{ {'a': 1}|tojson(indent=2) }}", '{\n  "a": 1\n}'),
        ("{{ {'a': 1, 'b': 2}|tojson(separators=(',', ':')) }}", '{"a":1,"b":2}'),
        ("{{ {'b': 1, 'a': 2}|tojson(sort_keys=True) }}", '{"a": 2, "b": 1}'),
        ("{{ [{'f': 1}]|map(attribute='f')|tojson }}", "[1]"),
        ("{{ ('{\"a\": [1]}'|from_json).a[0] }}", "1"),
    ],
)
def test_tojson_and_from_json_as_templates_call_them(source: str, expected: str) -> None:
    assert render(source) == expected


def test_lists_and_dicts_of_the_template_can_change() -> None:
    source = (
        "{% set ns = namespace(ids=[]) %}{% set d = {} %}"
        "{% set _ = ns.ids.append('a') %}{% do ns.ids.extend(['b', 'c']) %}"
        "{% do ns.ids.insert(0, 'z') %}{% set first = ns.ids.pop(0) %}"
        "{% do d.update({'k': 1}) %}{% do d.setdefault('j', 2) %}"
        "{{ first }} {{ ns.ids|join(',') }} {{ d|dictsort }} {{ d.get('k') }}"
    )
    assert render(source) == "z a,b,c [('j', 2), ('k', 1)] 1"


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.__class__.__mro__ }}",
        "{{ messages.append.__self__.__class__.x }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ raise_exception.__globals__['os'] }}",
        "{% set l = [2, 1] %}{{ l.sort() }}",
        "{% set s = ('a', 'b') %}{{ (s|list).__setitem__(0, 'x') }}",
    ],
)
def test_python_internals_stay_out_of_reach(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        render(source)


def test_transformers_generation_blocks_keep_their_body() -> None:
    source = (
        "{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endfor %}"
    )
    assert render(source) == "<x>"


def test_templates_get_the_date_and_can_refuse() -> None:
    assert render("{{ strftime_now('%Y') }}") == time.strftime("%Y")
    with pytest.raises(ChatTemplateError, match="rejected the messages: no"):
        render("{{ raise_exception('no') }}")


def test_loop_controls_and_tests_real_templates_use() -> None:
    source = (
        "{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}"
        "{% if i is even %}{% continue %}{% endif %}{{ i }}{% endfor %}"
        "{{ 'a' is string }}{{ {} is mapping }}{{ [] is sequence }}{{ 1.5 is float }}"
        "{{ true is boolean }}{{ {'a': 1}|items|list }}{{ ' a '|trim }}{{ 'a,b'.split(',') }}"
    )
    assert render(source) == "1TrueTrueTrueTrueTrue[('a', 1)]a['a', 'b']"


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% set x = i ~ j %}{% endfor %}{% endfor %}",
    ],
)
def test_a_render_that_runs_too_long_is_stopped(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match="time limit"):
        ChatTemplate(source, limits=QUICK).render(USER)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "source",
    [
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "{% set s = 'xxxxxxxxxx' %}" + "{% set s = s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s %}" * 12,
        "{% set s = 'xxxxxxxxxx' %}" + "{% set s = s + s + s + s + s + s + s + s + s + s %}" * 12,
        "{{ 'x' * 10**10 }}",
        "{{ ([0] * 10**9)|length }}",
        "{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}"
        "{% endfor %}",
        "{{ 7 ** 100000 }}",
        "{{ '%999999999d' % 1 }}",
        "{{ '%*d' % (999999999, 1) }}",
        "{{ '{:>999999999}'.format('x') }}",
        "{{ '%999999999s'|format('x') }}",
        "{{ 'x'|center(999999999) }}",
        "{{ 'x'.ljust(999999999) }}",
        "{% set s = 'x' * 10000 %}{{ s.replace('', s) }}",
        "{% set s = 'x' * 10000 %}{{ s|replace('x', s) }}",
        "{% set s = 'x' * 1000000 %}{{ ([s] * 1000)|join }}",
        "{% set s = 'x' * 1000000 %}{{ ''.join([s] * 1000) }}",
        "{% set s = '\n' * 1000000 %}{{ s|indent(1000) }}",
        "{% set l = [1] %}{% for i in range(40) %}{% do l.extend(l) %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}"
        "{% endfor %}{% endfor %}",
    ],
)
def test_a_render_that_grows_too_big_is_stopped(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match=r"characters|items|bits"):
        ChatTemplate(source, limits=QUICK).render(USER)
    assert time.monotonic() - started < 5


def test_limits_count_per_render() -> None:
    template = ChatTemplate(
        "{% for i in range(20) %}{{ messages[0].content }}{% endfor %}",
        limits=RenderLimits(max_chars=25),
    )
    for _ in range(3):
        assert template.render(USER) == "x" * 20
    with pytest.raises(ChatTemplateError, match="characters"):
        template.render([{"role": "user", "content": "xx"}])
