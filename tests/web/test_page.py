"""The web page in a real browser (Chromium through Playwright) against a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from server.app import create_app
from tests.conftest import LiveServer, make_settings
from tests.web.conftest import screenshot

USAGE = re.compile(r"\d+ prompt tokens \(\d+ cached\) · \d+ tokens · first token [\d.]+ s")


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    settings = make_settings()
    with LiveServer(create_app(settings), settings) as live:
        yield live


class Watched:
    """A page, and the errors its console and scripts reported."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 760})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    page = Watched(browser)
    yield page
    page.close()


def chat(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_a_chat_streams_its_answer_shows_its_usage_and_survives_a_reload(
    server: LiveServer, watched: Watched
) -> None:
    page = watched.page
    page.goto(server.base_url + "/")
    expect(page.locator("#model option[value=smollm2]")).to_have_count(1)
    page.select_option("#model", "smollm2")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.fill("#system", "You are a terse assistant.")
    chat(page, "Name three colours.")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".usage")).to_have_text(USAGE, timeout=60_000)
    text = answer.locator(".body").inner_text()
    assert text.strip()
    expect(page.locator("#send")).to_have_text("Send")

    page.reload()
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li span")).to_have_text("Name three colours.")
    expect(page.locator(".message.user")).to_have_text("Name three colours.")
    expect(page.locator(".message.assistant .usage")).to_have_count(1)
    assert page.locator(".message.assistant .body").inner_text() == text
    expect(page.locator(".message.assistant .usage")).to_have_text(USAGE)
    assert page.input_value("#system") == "You are a terse assistant."

    # The next turn sends the conversation so far: its prefix comes from the KV cache.
    chat(page, "And three more?")
    second = page.locator(".message.assistant").nth(1).locator(".usage")
    expect(second).to_have_text(USAGE, timeout=60_000)
    cached = re.search(r"\((\d+) cached\)", second.inner_text())
    assert cached is not None and int(cached.group(1)) > 0
    expect(page.locator("#conversations li span")).to_be_visible()
    screenshot(page, "web-chat")
    assert watched.errors == []


def test_what_the_user_or_the_model_writes_is_never_run_as_html(
    server: LiveServer, watched: Watched
) -> None:
    page = watched.page
    page.goto(server.base_url + "/")
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> **bold**'
    # The model's text, through the renderer its answers go through.
    rendered = page.evaluate(
        """(source) => {
            const node = renderMarkdown(source);
            document.body.append(node);
            return {
                images: node.querySelectorAll("img, script").length,
                strong: node.querySelectorAll("strong").length,
                code: node.querySelector("pre code")?.textContent,
                links: [...node.querySelectorAll("a")].map((a) => a.getAttribute("href")),
                text: node.textContent,
            };
        }""",
        hostile
        + "\n\n```python\nprint('<b>hi</b>')\n```\n\n[ok](https://example.org) "
        + "[bad](javascript:alert(1))",
    )
    assert rendered["images"] == 0
    assert rendered["strong"] == 1
    assert rendered["code"] == "print('<b>hi</b>')"
    assert rendered["links"] == ["https://example.org"]
    assert "<img src=x" in rendered["text"]
    # Markdown-looking text that is not emphasis keeps every character.
    plain = page.evaluate(
        """(source) => {
            const node = renderMarkdown(source);
            return {
                text: node.textContent,
                emphasis: node.querySelectorAll("em, strong").length,
                start: node.querySelector("ol")?.start,
            };
        }""",
        "call snake_case_name with 2 * 3 * 4\n\n3. third\n4. fourth",
    )
    assert plain["text"].startswith("call snake_case_name with 2 * 3 * 4")
    assert plain["emphasis"] == 0
    assert plain["start"] == 3
    # The user's text, sent for real.
    page.select_option("#model", "smollm2")
    page.fill("#max-tokens", "4")
    chat(page, hostile)
    expect(page.locator(".message.user")).to_have_text(hostile)
    expect(page.locator(".message.assistant .usage")).not_to_be_empty(timeout=60_000)
    assert page.locator("#messages img, #messages script").count() == 0
    assert page.evaluate("window.pwned") is None
    assert watched.errors == []


def test_the_status_view_shows_the_model_and_follows_its_work(
    server: LiveServer, watched: Watched
) -> None:
    page = watched.page
    page.goto(server.base_url + "/")
    page.click("#tab-status")
    row = page.locator("#models-table tr[data-model=smollm2]")
    expect(row.locator("td").nth(1)).to_have_text("yes")
    expect(row.locator("td").nth(2)).to_have_text(re.compile(r"\d+ / 8"))
    before = int(row.locator("td").nth(6).inner_text())
    reply = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 12},
        timeout=60,
    )
    generated = reply.json()["usage"]["completion_tokens"]
    # It polls every two seconds.
    expect(row.locator("td").nth(6)).to_have_text(str(before + generated), timeout=10_000)
    expect(row.locator("td").nth(4)).to_have_text(re.compile(r"\d+% of \d+"))
    # The flash attention loading chose by measuring on this CPU (or remembered doing so).
    expect(row.locator("td").nth(7)).to_have_text(
        re.compile(r"^(on|off) \((measured|remembered)\)$")
    )
    expect(page.locator("#keys-usage")).to_be_hidden()
    screenshot(page, "web-status")
    assert watched.errors == []


def test_with_keys_on_the_page_asks_for_one_and_only_an_admin_sees_keys_usage(
    browser: Browser, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "alice"\nkey = "sk-alice"\n\n'
        '[[keys]]\nname = "root"\nkey = "sk-root"\nadmin = true\n'
    )
    settings = make_settings(api_keys_file=keys)
    with LiveServer(create_app(settings), settings) as live:
        watched = Watched(browser)
        page = watched.page
        try:
            page.goto(live.base_url + "/")
            expect(page.locator("#key-dialog")).to_be_visible()
            page.fill("#key-input", "sk-wrong")
            page.click("#key-form button")
            expect(page.locator("#key-error")).to_have_text("That key was not accepted.")
            page.fill("#key-input", "sk-alice")
            page.click("#key-form button")
            expect(page.locator("#key-dialog")).to_be_hidden()
            expect(page.locator("#model option[value=smollm2]")).to_have_count(1)
            page.click("#tab-status")
            expect(page.locator("#models-table tr[data-model=smollm2]")).to_have_count(1)
            expect(page.locator("#keys-usage")).to_be_hidden()

            page.click("#key-button")
            page.fill("#key-input", "sk-root")
            page.click("#key-form button")
            usage = page.locator("#keys-table tbody tr")
            expect(usage).to_have_count(2)
            expect(usage.first.locator("td").first).to_have_text("alice")
            # alice's requests: the model list (status polls do not count against a key).
            assert int(usage.first.locator("td").nth(1).inner_text()) >= 1
        finally:
            watched.close()
    # The browser's 401s for the wrong key are the only console errors.
    assert all("401" in error for error in watched.errors), watched.errors


def test_json_mode_and_stop_sequences_reach_the_model(server: LiveServer, watched: Watched) -> None:
    page = watched.page
    page.goto(server.base_url + "/")
    page.select_option("#model", "smollm2")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.check("#json-mode")
    chat(page, "Describe a cat as JSON.")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".usage")).to_have_text(USAGE, timeout=60_000)
    assert answer.locator(".body").inner_text().lstrip().startswith("{")

    page.uncheck("#json-mode")
    page.click("#new-chat")
    page.fill("#max-tokens", "64")
    page.fill("#stop", ",")
    chat(page, "List five fruits, separated by commas.")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".usage")).to_contain_text("finish: stop", timeout=60_000)
    assert "," not in answer.locator(".body").inner_text()
    expect(page.locator("#conversations li")).to_have_count(2)
    assert watched.errors == []


def test_a_refused_message_shows_why_and_goes_back_to_the_message_box(
    server: LiveServer, watched: Watched
) -> None:
    page = watched.page
    page.goto(server.base_url + "/")
    page.select_option("#model", "smollm2")
    page.fill("#max-tokens", "100000")  # beyond the model's context: 400
    chat(page, "Tell me a story.")
    expect(page.locator(".message.error")).to_contain_text("maximum context length")
    expect(page.locator("#prompt")).to_have_value("Tell me a story.")
    assert page.locator(".message.user").count() == 0  # not left unanswered in the chat
    page.fill("#max-tokens", "8")
    page.press("#prompt", "Enter")
    expect(page.locator(".message.assistant .usage")).to_have_text(USAGE, timeout=60_000)
    expect(page.locator(".message.user")).to_have_count(1)
    # The 400 is the only console error (Chromium logs failed fetches).
    assert all("400" in error for error in watched.errors), watched.errors


# A fetch for /v1/chat/completions that streams `pieces` as the server would, one piece per
# two animation frames (so that the page paints after each), and records in window.streamed
# what the page did with them. Every other request goes to the server.
FAKE_STREAM = """(pieces) => {
    const serverFetch = window.fetch;
    window.fetch = (path, options) => {
        if (path !== "/v1/chat/completions") return serverFetch(path, options);
        const encoder = new TextEncoder();
        const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
        const event = (data) => encoder.encode("data: " + JSON.stringify(data) + "\\n\\n");
        let added = 0; // characters of text the page put in while the answer streamed
        const count = (records) => {
            for (const record of records) for (const node of record.addedNodes) added += node.textContent.length;
        };
        const observer = new MutationObserver(count);
        observer.observe(document.getElementById("messages"), { childList: true, subtree: true });
        const body = new ReadableStream({
            async start(controller) {
                const seen = []; // after each piece, the elements of the finished blocks
                let text = "";
                for (const piece of pieces) {
                    controller.enqueue(event({ choices: [{ index: 0, delta: { content: piece } }] }));
                    text += piece;
                    await frame();
                    await frame();
                    // The blocks before the last blank line are finished, whatever comes next.
                    const blank = text.lastIndexOf("\\n\\n");
                    const finished = blank < 0 ? 0 : renderMarkdown(text.slice(0, blank)).children.length;
                    const body = document.querySelector("#messages > .message:last-child > .body");
                    seen.push([...body.children].slice(0, finished));
                }
                count(observer.takeRecords());
                observer.disconnect();
                const final = [...document.querySelector("#messages > .message:last-child > .body").children];
                let kept = 0;
                let replaced = 0;
                for (const elements of seen) {
                    elements.forEach((element, i) => (element === final[i] ? kept++ : replaced++));
                }
                window.streamed = { added, kept, replaced };
                controller.enqueue(event({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }));
                controller.enqueue(encoder.encode("data: [DONE]\\n\\n"));
                controller.close();
            },
        });
        return Promise.resolve(new Response(body, { headers: { "Content-Type": "text/event-stream" } }));
    };
}"""


def test_a_streamed_answer_renders_its_open_block_not_the_whole_answer(
    server: LiveServer, watched: Watched
) -> None:
    blocks = ["# A long answer"]
    blocks += [f"Paragraph {i} says *something* in `a few` words." for i in range(10)]
    blocks += ["- one\n- two", "```python\nprint('hello')\n```", "Done."]
    answer = "\n\n".join(blocks)
    pieces = [answer[i : i + 8] for i in range(0, len(answer), 8)]
    page = watched.page
    page.goto(server.base_url + "/")
    expect(page.locator("#model option[value=smollm2]")).to_have_count(1)
    page.select_option("#model", "smollm2")
    page.evaluate(FAKE_STREAM, pieces)
    chat(page, "Write a long answer.")
    page.wait_for_function("() => window.streamed", timeout=60_000)
    streamed = page.evaluate("window.streamed")
    # Every finished block's element stayed in the page, the same element: the page painted
    # after each piece, and did not render the finished blocks again.
    assert streamed["replaced"] == 0, streamed
    assert streamed["kept"] > len(pieces)
    # All the text the page put in while streaming: each paint adds the open block, at most a
    # block's text; painting the whole answer each time would add about pieces x answer / 2.
    longest = max(len(block) for block in blocks)
    assert streamed["added"] <= len(answer) + len(pieces) * longest, streamed
    body = page.locator(".message.assistant .body")
    expect(body.locator("p")).to_have_count(11)
    expect(body.locator("h3, ul li, pre code")).to_have_count(4)
    assert body.inner_text().startswith("A long answer")
    assert watched.errors == []


def test_the_models_view_pulls_with_a_progress_bar_lists_and_deletes(
    browser: Browser, tmp_path: Path
) -> None:
    """Issue 26: the page's model manager pulls from a registry (a local one speaking Ollama's
    protocol, serving our real GGUF), shows the pull's progress, lists the model, chats with it,
    and deletes it; a reference nothing answers for says why."""
    from tests.conftest import model_file
    from tests.models.fake_hub import FakeHub, serve_hub

    hub = FakeHub()
    hub.manifests["library/smollm2:135m"] = [
        ("application/vnd.ollama.image.model", model_file("smollm2").read_bytes())
    ]
    with serve_hub(hub):
        settings = make_settings(models=[], models_dir=tmp_path, ollama_registry=hub.url)
        with LiveServer(create_app(settings), settings) as live:
            watched = Watched(browser)
            page = watched.page
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(live.base_url + "/")
            page.click("#tab-models")
            expect(page.locator("#manage-table tbody tr")).to_have_count(0)
            page.fill("#pull-ref", "nothing:1b")
            page.click("#pull-button")
            expect(page.locator("#pull-text")).to_contain_text("not in the registry")
            page.fill("#pull-ref", "smollm2:135m")
            page.click("#pull-button")
            expect(page.locator("#pull-text")).to_have_text("Pulled smollm2:135m.", timeout=60_000)
            assert page.locator("#pull-bar").evaluate("bar => bar.value === bar.max")
            row = page.locator("#manage-table tbody tr")
            expect(row).to_have_count(1)
            expect(row.locator("td").first).to_have_text("smollm2:135m")
            screenshot(page, "web-models")
            # It is in the chat's model list at once.
            page.click("#tab-chat")
            expect(page.locator("#model option")).to_have_text(["smollm2:135m"])
            page.click("#tab-models")
            row.locator("button").click()
            expect(page.locator("#manage-table tbody tr")).to_have_count(0)
            expect(page.locator("#manage-note")).to_have_text("Deleted smollm2:135m.")
            assert not list(tmp_path.glob("blobs/sha256-*"))
            assert watched.errors == []
            watched.close()
