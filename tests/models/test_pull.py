"""Pulling models from Hugging Face and URLs, against a local server that speaks the hub's
protocol (tests/models/fake_hub.py) and serves our real GGUF: a pull, a pull cut half way and
resumed, a corrupted byte, a gated repo, an ambiguous quantization, two pulls of one file at
once, and the pulled model answering a chat without a config entry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.errors import ChecksumMismatchError, ModelSourceError
from server.models.arguments import model_entries
from server.models.download import RemoteFile, fetch
from server.models.hub import HubReference, RepoFile, choose_gguf, parse_reference, quant_of
from server.models.pull import PullOptions, pull, reference_name
from server.models.pulled import PulledModels
from tests.conftest import make_settings, model_file
from tests.models.fake_hub import FakeHub, Repo, serve_hub
from tests.models.gguf_split import split_gguf

REAL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def gguf() -> bytes:
    return model_file("smollm2").read_bytes()


@pytest.fixture
def hub(gguf: bytes) -> Iterator[FakeHub]:
    repos = {
        "team/SmolLM2-GGUF": Repo(
            {
                REAL: gguf,
                "SmolLM2-135M-Instruct.Q8_0.gguf": b"GGUF" + b"\0" * 100,
                "README.md": b"# SmolLM2\n",
            }
        ),
        "team/gated-GGUF": Repo({REAL: gguf}, token="hf_secret"),
        "team/twice-GGUF": Repo({REAL: gguf, f"sub/{REAL}": gguf}),
    }
    with serve_hub(FakeHub(repos)) as running:
        yield running


def options(hub: FakeHub, token: str | None = None) -> PullOptions:
    return PullOptions(hf_endpoint=hub.url, hf_token=token, timeout=10)


def test_references_are_read_as_hugging_face_and_ollama_write_them() -> None:
    assert parse_reference("hf:team/repo") == HubReference("team/repo")
    assert parse_reference("hf:team/repo:Q4_K_M@v1.0") == HubReference(
        "team/repo", "Q4_K_M", "v1.0"
    )
    assert parse_reference("hf.co/team/repo:q8_0") == HubReference("team/repo", "q8_0")
    assert parse_reference("https://huggingface.co/team/repo:Q4_1") == HubReference(
        "team/repo", "Q4_1"
    )
    for text in ("team/repo", "hf:../etc", "hf:team", "qwen3:4b", "hf:team/repo:Q4 x"):
        assert parse_reference(text) is None
    assert reference_name("hf:team/repo:Q4_1") == "hf.co/team/repo:Q4_1"
    assert reference_name("hf:team/repo") == "hf.co/team/repo:latest"
    assert reference_name("hf:team/repo:Q4_1@v2") == "hf.co/team/repo:Q4_1@v2"
    assert reference_name("https://example.com/x/My%20Model.Q4_0.gguf") == "My-Model.Q4_0"
    # A URL's name never looks like an Ollama name:tag (it would take that model's place).
    assert reference_name("https://example.com/qwen3:4b.gguf") == "qwen3-4b"
    for climbing in ("hf:a/b@../../x", "hf:a/b@/tmp/x", "hf:a/b@v1/../../x"):
        assert parse_reference(climbing) is None
    assert quant_of("Qwen3-4B-Instruct-2507-UD-Q4_K_XL.gguf") == "Q4_K_XL"
    assert quant_of("llama-3.2-1b-instruct-f16.gguf") == "F16"


def test_a_split_model_is_chosen_whole_and_in_order() -> None:
    files = [
        RepoFile(f"Q4_K_M/model-Q4_K_M-0000{i}-of-00003.gguf", 10, None) for i in (3, 1, 2)
    ] + [RepoFile("model-Q8_0.gguf", 10, None), RepoFile("mmproj-model-f16.gguf", 1, None)]
    chosen = choose_gguf(files, HubReference("a/b"))
    assert [f.path.rsplit("-", 3)[1] for f in chosen] == ["00001", "00002", "00003"]
    with pytest.raises(ModelSourceError, match="parts \\[1, 3\\] of \\[3\\]"):
        choose_gguf([files[0], files[1]], HubReference("a/b"))
    # Parts of different cuts, or one file beside parts of the same name: an error that says
    # so, not a crash.
    mixed = [
        RepoFile("m-Q4_K_M-00001-of-00002.gguf", 1, None),
        RepoFile("m-Q4_K_M-00002-of-00003.gguf", 1, None),
    ]
    with pytest.raises(ModelSourceError, match="not one whole model"):
        choose_gguf(mixed, HubReference("a/b"))
    beside = [
        RepoFile("m-Q4_K_M.gguf", 1, None),
        RepoFile("m-Q4_K_M.gguf-00001-of-00001.gguf", 1, None),
    ]
    with pytest.raises(ModelSourceError, match="several Q4_K_M GGUFs"):
        choose_gguf(beside, HubReference("a/b"))


def test_a_pull_fetches_verifies_and_records_the_model(
    hub: FakeHub, gguf: bytes, tmp_path: Path
) -> None:
    pulled = pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    assert pulled.name == "hf.co/team/SmolLM2-GGUF:Q4_1"
    path = tmp_path / pulled.gguf
    assert path.read_bytes() == gguf
    assert PulledModels(tmp_path).get(pulled.name) == pulled
    assert not list(tmp_path.rglob("*.partial"))
    # Again: nothing is downloaded.
    sent = hub.sent
    pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    assert hub.sent == sent


def test_a_pull_cut_half_way_resumes_where_it_stopped(
    hub: FakeHub, gguf: bytes, tmp_path: Path
) -> None:
    hub.cut_after = len(gguf) // 2
    with pytest.raises(ModelSourceError, match="run the pull again to resume"):
        pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    (partial,) = tmp_path.rglob("*.partial")
    kept = partial.stat().st_size  # what arrived before the cut
    assert len(gguf) // 4 < kept <= len(gguf) // 2
    assert not (partial.parent / REAL).exists()  # nothing under the final name
    first = hub.sent
    pulled = pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    assert hub.sent - first == len(gguf) - kept  # only the rest
    assert (tmp_path / pulled.gguf).read_bytes() == gguf
    assert hub.ranges == [None, f"bytes={kept}-"]


def test_a_server_that_ignores_the_range_sends_it_all_and_the_file_is_still_whole(
    hub: FakeHub, gguf: bytes, tmp_path: Path
) -> None:
    hub.cut_after = 1000
    with pytest.raises(ModelSourceError):
        pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    hub.ignore_range = True
    pulled = pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    assert (tmp_path / pulled.gguf).read_bytes() == gguf


def test_a_corrupted_byte_is_refused_and_nothing_is_left(hub: FakeHub, tmp_path: Path) -> None:
    hub.corrupt = True
    with pytest.raises(ChecksumMismatchError):
        pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    # No file, and no partial one to resume from.
    assert not [*tmp_path.rglob("*.gguf"), *tmp_path.rglob("*.partial")]
    assert PulledModels(tmp_path).all() == []


def test_a_gated_repo_needs_the_token(hub: FakeHub, gguf: bytes, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"gated or private.*HF_TOKEN"):
        pull("hf:team/gated-GGUF:Q4_1", tmp_path, options(hub))
    with pytest.raises(ModelSourceError, match="gated or private"):
        pull("hf:team/gated-GGUF:Q4_1", tmp_path, options(hub, "hf_wrong"))
    pulled = pull("hf:team/gated-GGUF:Q4_1", tmp_path, options(hub, "hf_secret"))
    assert (tmp_path / pulled.gguf).read_bytes() == gguf


def test_a_missing_or_ambiguous_quantization_lists_the_choices(
    hub: FakeHub, tmp_path: Path
) -> None:
    with pytest.raises(ModelSourceError, match="no Q4_K_M GGUF; choose one of: Q4_1, Q8_0"):
        pull("hf:team/SmolLM2-GGUF", tmp_path, options(hub))
    with pytest.raises(ModelSourceError, match="no Q2_K GGUF"):
        pull("hf:team/SmolLM2-GGUF:Q2_K", tmp_path, options(hub))
    with pytest.raises(ModelSourceError, match="several Q4_1 GGUFs"):
        pull("hf:team/twice-GGUF:Q4_1", tmp_path, options(hub))
    with pytest.raises(ModelSourceError, match="is not on"):
        pull("hf:team/nothing-GGUF:Q4_1", tmp_path, options(hub))
    assert hub.sent == 0


def test_the_file_list_is_read_across_pages(hub: FakeHub, tmp_path: Path) -> None:
    hub.page_size = 1
    pulled = pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    assert pulled.gguf.endswith(REAL)
    assert sum("/tree/" in r for r in hub.requests) == 4  # a directory and three files


def test_two_pulls_of_one_file_download_it_once(hub: FakeHub, gguf: bytes, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def one() -> None:
        try:
            pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert hub.sent == len(gguf)


def test_not_enough_disk_space_is_said_before_any_byte(hub: FakeHub, tmp_path: Path) -> None:
    remote = RemoteFile(f"{hub.url}/cdn/{'0' * 64}", size=1 << 60)
    with httpx.Client() as client, pytest.raises(ModelSourceError, match="not enough disk"):
        fetch(client, remote, tmp_path / "huge.gguf")
    assert hub.sent == 0


def test_a_url_is_pulled_and_a_file_that_is_not_gguf_is_refused(
    hub: FakeHub, gguf: bytes, tmp_path: Path
) -> None:
    import hashlib

    sha = hashlib.sha256(gguf).hexdigest()
    pulled = pull(f"{hub.url}/cdn/{sha}", tmp_path, options(hub))
    assert (tmp_path / pulled.gguf).read_bytes() == gguf
    readme = hashlib.sha256(b"# SmolLM2\n").hexdigest()
    hub.repos["team/SmolLM2-GGUF"].files["README.md"] = b"# SmolLM2\n"
    with pytest.raises(ModelSourceError, match="not a GGUF"):
        pull(f"{hub.url}/cdn/{readme}", tmp_path / "other", options(hub))


def test_a_pulled_model_is_served_by_its_name_without_a_config_entry(
    hub: FakeHub, tmp_path: Path
) -> None:
    pulled = pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    settings = make_settings(models_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        names = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert pulled.name in names
        answer = client.post(
            "/v1/chat/completions",
            json={
                "model": pulled.name,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4,
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] > 0


def test_a_model_named_on_the_command_line_by_reference_is_pulled_from_its_source() -> None:
    (entry,) = model_entries(["hf:team/SmolLM2-GGUF:Q4_1"])
    assert entry["source"] == "hf:team/SmolLM2-GGUF:Q4_1"
    assert entry["name"] == "hf.co/team/SmolLM2-GGUF:Q4_1"


def test_a_model_from_ollamas_registry_is_pulled_with_its_parameters(
    hub: FakeHub, gguf: bytes, tmp_path: Path
) -> None:
    params = (
        b'{"temperature": 0.6, "top_k": 20, "num_ctx": 4096, "stop": ["<|im_end|>"],'
        b' "num_predict": -1, "top_p": "high"}'
    )
    hub.manifests["library/smollm2:135m"] = [
        ("application/vnd.ollama.image.model", gguf),
        ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
        ("application/vnd.ollama.image.params", params),
    ]
    for reference in ("ollama:smollm2:135m", "smollm2:135m"):
        pulled = pull(reference, tmp_path, PullOptions(ollama_registry=hub.url, timeout=10))
        assert pulled.name == "smollm2:135m"
    # Every layer once: the second pull found them in place.
    assert hub.sent == len(gguf) + len(b"{{ .Prompt }}") + len(params)
    import hashlib

    assert pulled.gguf == f"blobs/sha256-{hashlib.sha256(gguf).hexdigest()}"
    assert (tmp_path / pulled.gguf).read_bytes() == gguf
    # Numbers in range become defaults, and the stop strings; -1 (no limit) and text do not.
    assert pulled.settings == {
        "defaults": {"temperature": 0.6, "top_k": 20, "stop": ["<|im_end|>"]},
        "n_ctx": 4096,
    }
    assert pulled.template is None  # the GGUF has its own chat template
    with pytest.raises(ModelSourceError, match="not in the registry"):
        pull("ollama:nothing:1b", tmp_path, PullOptions(ollama_registry=hub.url, timeout=10))


def test_a_split_model_is_pulled_whole_and_answers_from_its_first_part(
    hub: FakeHub, tmp_path: Path
) -> None:
    """llama.cpp's split format (tests/models/gguf_split.py writes it as llama-gguf-split
    does): every part is fetched and verified, and llama.cpp loads them from the first."""
    parts = split_gguf(model_file("smollm2"), tmp_path, "SmolLM2-135M-Instruct-Q4_1", 3)
    hub.repos["team/split-GGUF"] = Repo(
        {f"Q4_1/{p.name}": p.read_bytes() for p in parts}
        | {"SmolLM2-135M-Instruct-Q8_0.gguf": b"GGUF" + b"\0" * 64}
    )
    models = tmp_path / "models"
    pulled = pull("hf:team/split-GGUF:Q4_1", models, options(hub))
    assert [f.rsplit("/", 1)[1] for f in pulled.files] == [p.name for p in parts]
    assert pulled.gguf.endswith("-00001-of-00003.gguf")
    assert pulled.size == sum(p.stat().st_size for p in parts)
    settings = make_settings(models=[], models_dir=models)
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/v1/completions",
            json={"model": pulled.name, "prompt": "Once upon a time", "max_tokens": 4},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] > 0


def test_the_command_line_pulls_lists_and_removes(
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from server.cli import main

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HEARTH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/models.toml here: the built-in entry only
    common = ["--models-dir", str(tmp_path / "models")]
    assert main(["pull", "hf:team/SmolLM2-GGUF:Q4_1", *common]) == 0
    assert "pulled: hf.co/team/SmolLM2-GGUF:Q4_1" in capsys.readouterr().out
    assert main(["models", "list", *common]) == 0
    listing = capsys.readouterr().out
    assert "hf.co/team/SmolLM2-GGUF:Q4_1" in listing
    assert "pulled hf:team/SmolLM2-GGUF:Q4_1" in listing
    assert main(["pull", "hf:team/SmolLM2-GGUF", *common]) == 1
    error = capsys.readouterr().err
    assert error.startswith("hearth: ") and error.count("\n") == 1
    assert "choose one of: Q4_1, Q8_0" in error
    assert main(["models", "rm", "hf.co/team/SmolLM2-GGUF:Q4_1", *common]) == 0
    assert "removed: hf.co/team/SmolLM2-GGUF:Q4_1" in capsys.readouterr().out
    assert not list((tmp_path / "models").rglob("*.gguf"))


GO_TEMPLATE = b"""{{ if .System }}<start_of_turn>system
{{ .System }}<end_of_turn>
{{ end }}{{ if .Prompt }}<start_of_turn>user
{{ .Prompt }}<end_of_turn>
{{ end }}<start_of_turn>model
{{ .Response }}<end_of_turn>
"""


def test_an_ollama_models_template_system_and_stop_become_its_settings(
    hub: FakeHub, tmp_path: Path
) -> None:
    """Gemma 3 270M's GGUF has no chat template: the registry's Go template (the part Hearth
    reads) becomes one, its SYSTEM the default system prompt, its stop strings the default
    stop strings; the model then chats, which it could not before."""
    hub.manifests["library/gemma3:270m"] = [
        ("application/vnd.ollama.image.model", model_file("gemma3-270m").read_bytes()),
        ("application/vnd.ollama.image.template", GO_TEMPLATE),
        ("application/vnd.ollama.image.system", b"You answer briefly."),
        ("application/vnd.ollama.image.params", b'{"stop": [" "], "temperature": 0}'),
    ]
    pulled = pull("gemma3:270m", tmp_path, PullOptions(ollama_registry=hub.url, timeout=10))
    assert pulled.template is not None and pulled.template.startswith("templates/")
    assert pulled.settings["system"] == "You answer briefly."
    settings = make_settings(models=[], models_dir=tmp_path)
    with TestClient(create_app(settings)) as client:

        def chat(messages: list[dict[str, str]]) -> dict[str, object]:
            answer = client.post(
                "/api/chat",
                json={"model": "gemma3:270m", "messages": messages, "stream": False,
                      "options": {"num_predict": 24}},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            result: dict[str, object] = answer.json()
            return result

        question = [{"role": "user", "content": "Name a colour."}]
        default = chat(question)
        none = chat([{"role": "system", "content": ""}, *question])
        # The default system prompt is in the first prompt, not in one that brings its own.
        assert default["prompt_eval_count"] > none["prompt_eval_count"]  # type: ignore[operator]
        # The default stop string (a space) ends the answer at its first space.
        content = default["message"]["content"]  # type: ignore[index]
        assert " " not in content.strip() and default["done_reason"] == "stop"


def test_a_repos_chat_template_is_used_only_where_the_gguf_has_none(
    hub: FakeHub, tmp_path: Path
) -> None:
    template = (
        "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    hub.repos["team/gemma-GGUF"] = Repo(
        {
            "gemma-3-270m-Q4_K_M.gguf": model_file("gemma3-270m").read_bytes(),
            "chat_template.jinja": template.encode(),
        }
    )
    hub.repos["team/SmolLM2-GGUF"].files["chat_template.jinja"] = template.encode()
    gemma = pull("hf:team/gemma-GGUF", tmp_path, options(hub))  # one GGUF: no quant needed
    assert gemma.template is not None
    assert (tmp_path / gemma.template).read_text() == template
    smol = pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    assert smol.template is None  # its GGUF carries its own
    with TestClient(create_app(make_settings(models=[], models_dir=tmp_path))) as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": gemma.name, "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 3},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text


def test_the_terminal_progress_shows_the_bar_speed_and_time_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import sys

    from server.models.download import terminal_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    show = terminal_progress("pull x")
    assert show is not None
    show(10_000_000, 100_000_000)
    show(100_000_000, 100_000_000)
    lines = screen.getvalue().split("\r")[1:]
    assert lines[0].startswith("pull x [##------------------] 10.0/100.0 MB ")
    assert "MB/s" in lines[0] and lines[0].endswith(" left")
    assert lines[-1].startswith("pull x [####################] 100.0/100.0 MB")
    assert lines[-1].endswith("\n")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar
    assert terminal_progress("pull x") is None


@pytest.mark.parametrize(
    "path",
    [
        "%2Ftmp%2Fhearth-escape%2Fevil.gguf",  # an absolute path, once decoded
        "..%2F..%2F..%2F..%2Fhearth-escape.gguf",  # a climb, once decoded
        "a%2F%2E%2E%2F%2E%2E%2Fhearth-escape.gguf",
        "nul%00byte.gguf",
        "x" * 600 + ".gguf",
    ],
)
def test_a_urls_path_never_reaches_outside_the_models_folder(
    hub: FakeHub, gguf: bytes, tmp_path: Path, path: str
) -> None:
    """Red-team finding: a percent-encoded slash once let a URL write (and delete) files
    anywhere the server could."""
    hub.any_file = gguf
    models = tmp_path / "models"
    pulled = pull(f"{hub.url}/files/{path}", models, options(hub))
    written = (models / pulled.gguf).resolve()
    assert written.is_relative_to(models.resolve()) and written.read_bytes() == gguf
    assert [p for p in tmp_path.rglob("*.gguf") if not p.is_relative_to(models)] == []
    assert not Path("/tmp/hearth-escape").exists()


def test_an_error_answer_is_not_read_whole(hub: FakeHub, tmp_path: Path) -> None:
    """An error that claims a gigabyte of body is answered at once from its status."""
    with pytest.raises(ModelSourceError, match="HTTP 500"):
        pull(f"{hub.url}/fail/500", tmp_path, options(hub))


def test_a_url_that_is_not_a_gguf_is_refused_from_its_first_bytes(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.any_file = b"<html>" + b"x" * (8 << 20)
    with pytest.raises(ModelSourceError, match="not a GGUF"):
        pull(f"{hub.url}/files/model.gguf", tmp_path, options(hub))
    size, sent = len(hub.any_file), hub.sent
    assert sent < size  # the pull stopped reading: the server could not send it all
    assert not [*tmp_path.rglob("*.gguf"), *tmp_path.rglob("*.partial")]


def test_a_params_layer_cannot_size_the_kv_cache_past_the_bound() -> None:
    from server.models.ollama_registry import MAX_NUM_CTX, settings_from_params

    assert settings_from_params(b'{"num_ctx": 8192}') == {"n_ctx": 8192}
    assert settings_from_params(f'{{"num_ctx": {MAX_NUM_CTX + 1}}}'.encode()) == {}
    assert settings_from_params(b'{"num_ctx": 4294967296}') == {}
    assert settings_from_params(b"[1, 2]") == {} and settings_from_params(b"{nope") == {}


def test_a_pulled_file_that_is_no_model_does_not_hide_the_others(
    hub: FakeHub, tmp_path: Path
) -> None:
    pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    broken = pull("hf:team/SmolLM2-GGUF:Q8_0", tmp_path, options(hub))  # "GGUF" and zeros
    with TestClient(create_app(make_settings(models=[], models_dir=tmp_path))) as client:
        tags = client.get("/api/tags")
        assert tags.status_code == 200
        names = [m["name"] for m in tags.json()["models"]]
        assert "hf.co/team/SmolLM2-GGUF:Q4_1" in names and broken.name not in names


def test_a_config_entrys_source_is_served_once_pulled(hub: FakeHub, tmp_path: Path) -> None:
    entry = {"name": "mine", "source": "hf:team/SmolLM2-GGUF:Q4_1", "n_ctx": 512, "threads": 2}
    settings = make_settings(models=[entry], models_dir=tmp_path)
    body = {"model": "mine", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with TestClient(create_app(settings)) as client:
        missing = client.post("/v1/chat/completions", json=body)
        assert missing.status_code == 503
        assert "hearth pull hf:team/SmolLM2-GGUF:Q4_1" in missing.json()["error"]["message"]
    pull("hf:team/SmolLM2-GGUF:Q4_1", tmp_path, options(hub))
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        # Served under the entry's name only: the pulled row is the same model.
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["mine"]
