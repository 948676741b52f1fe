"""The `hearth` command's model and key helpers, and its settings flags."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.access import key_digest
from server.cli import _build_parser, _settings_overrides, main
from server.errors import ModelSourceError
from server.models.arguments import model_entries
from server.settings import load_settings
from tests.conftest import LiveServer, free_port, model_file


def test_keys_hash_prints_the_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "hash", "sk-test"]) == 0
    assert capsys.readouterr().out.strip() == key_digest("sk-test").hex()


def test_list_settings_are_repeatable_flags() -> None:
    args = _build_parser().parse_args(
        ["serve", "--api-key", "a", "--api-key", "b", "--cors-origin", "https://x.example"]
    )
    settings = load_settings(None, **_settings_overrides(args))
    assert settings.api_keys == ["a", "b"]
    assert settings.cors_origins == ["https://x.example"]


def test_keys_from_the_environment_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_API_KEYS", "one, two,,three")
    assert load_settings(None).api_keys == ["one", "two", "three"]


def test_models_show_and_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copy(model_file("smollm2"), models_dir / model_file("smollm2").name)
    config = tmp_path / "models.toml"
    config.write_text(
        '[[models]]\nname = "smollm2"\npackage = "smollm2"\nkeep_alive = 60\n'
        '[[models]]\nname = "far"\nupstream = "http://h:1/v1"\nupstream_api_key = "secret"\n'
    )
    common = ["--config", str(config), "--models-dir", str(models_dir)]
    assert main(["models", "show", "smollm2", *common]) == 0
    shown = capsys.readouterr().out
    assert "keep_alive: 60.0" in shown and "MB]" in shown
    assert main(["models", "show", "far", *common]) == 0
    assert "upstream_api_key: (set)" in capsys.readouterr().out  # never printed
    assert main(["models", "rm", "smollm2", *common]) == 0
    assert not any(models_dir.iterdir())
    assert "removed" in capsys.readouterr().out
    assert main(["models", "rm", "far", *common]) == 1  # nothing Hearth pulled
    assert main(["models", "show", "nope", *common]) == 1


def test_models_list_shows_what_a_running_server_has_loaded(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--server", live_server.base_url]) == 0
    out = capsys.readouterr().out
    header, smollm2 = out.splitlines()[:2]
    assert header.split() == ["NAME", "SIZE", "QUANT", "CONTEXT", "TRAINED", "LOADED", "SOURCE"]
    # Size, quantization, the context served and trained, loaded, where it comes from.
    assert smollm2.split() == [
        "smollm2", "(SmolLM2-135M-Instruct)", "98.4", "MB", "Q4_1", "32768", "8192", "yes",
        "package", "smollm2",
    ]  # fmt: skip
    assert f"LOADED: on {live_server.base_url}" in out
    assert main(["models", "list", "--server", "http://127.0.0.1:9"]) == 1


def test_models_list_without_a_server_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_PORT", "9")
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "LOADED: no server answers at 127.0.0.1:9" in out
    assert out.splitlines()[1].split()[7] == "-"


def test_serve_takes_gguf_files_and_packaged_models_with_no_config_file(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "My Model.Q4_1.gguf"
    shutil.copy(model_file("smollm2"), copy)
    other = tmp_path / "sub" / "My Model.Q4_1.gguf"
    other.parent.mkdir()
    other.symlink_to(copy)
    entries = model_entries([str(copy), str(other), "gemma3-270m"])
    assert [e["name"] for e in entries] == ["My-Model.Q4_1", "My-Model.Q4_1-2", "gemma3-270m"]
    assert entries[0]["path"] == str(copy.resolve()) and entries[0]["preload"] is True
    assert entries[2]["package"] == "gemma3-270m"
    dots = tmp_path / "..gguf"
    shutil.copy(model_file("smollm2"), dots)
    assert model_entries([str(dots)])[0]["name"] == "model"
    for wrong in (str(tmp_path / "missing.gguf"), "no-such-model"):
        with pytest.raises(ModelSourceError):
            model_entries([wrong])
    assert main(["serve", str(tmp_path / "missing.gguf")]) == 1


def test_hearth_serve_a_gguf_file_then_chat_with_it(tmp_path: Path) -> None:
    """From a GGUF file to an answer: `hearth serve ./file.gguf` with no config file."""
    model = tmp_path / "tiny-chat.gguf"
    shutil.copy(model_file("smollm2"), model)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", str(model), "--port", str(port),
         "--ctx", "512", "--slots", "2",
         "--responses-db", str(tmp_path / "r.db"), "--kv-cache-dir", str(tmp_path / "kv")],
        cwd=tmp_path,  # no config/models.toml here
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.25)
        models = httpx.get(url + "/v1/models").json()["data"]
        assert [(m["id"], m["loaded"]) for m in models] == [("tiny-chat", True)]
        reply = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "tiny-chat", "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 8},
            timeout=60,
        )  # fmt: skip
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    finally:
        server.terminate()
        server.communicate(timeout=60)


def test_doctor_reports_each_model_and_fails_for_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_LAYOUT_MEMORY", str(tmp_path / "layouts.json"))
    config = tmp_path / "models.toml"
    config.write_text(
        f'[[models]]\nname = "small"\npath = "{model_file("smollm2")}"\nn_ctx = 256\n'
        'slots = 2\nthreads = 2\nflash_attn = "off"\n'
        '[[models]]\nname = "far"\nupstream = "http://h:1/v1"\n'
        '[[models]]\nname = "gone"\npath = "/nonexistent/model.gguf"\n'
    )
    assert main(["doctor", "--config", str(config)]) == 1  # one model's file is missing
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "\nllama.cpp: CPU : " in out
    assert "small: " in out and "flash attention off (configured)" in out
    assert "prompt-lookup speculation: off" in out
    assert "far: remote" in out and "gone: " in out and "missing" in out
    assert main(["doctor", "--config", str(config), "small"]) == 0
