from pathlib import Path

import pytest

from server.settings import load_settings

CONFIG = """
port = 9100
max_queue = 5

[[models]]
name = "tiny"
aliases = ["t"]
path = "tiny.gguf"
n_ctx = 512

[models.defaults]
temperature = 0.2
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(CONFIG)
    return path


def test_config_file_values_are_read(config_file: Path) -> None:
    settings = load_settings(config_file)
    assert settings.port == 9100
    assert settings.max_queue == 5
    (model,) = settings.models
    assert model.names == ["tiny", "t"]
    assert model.defaults.temperature == 0.2
    assert settings.resolve_path(model.path) == config_file.parent / "tiny.gguf"  # type: ignore[arg-type]


def test_environment_overrides_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_PORT", "9200")
    assert load_settings(config_file).port == 9200


def test_command_line_overrides_the_environment(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_PORT", "9200")
    assert load_settings(config_file, port="9300").port == 9300


def test_env_var_names_the_config_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HEARTH_CONFIG", str(config_file))
    monkeypatch.chdir(tmp_path)
    assert load_settings(None).port == 9100


def test_without_a_config_file_the_default_model_is_registered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HEARTH_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert [m.name for m in settings.models] == ["smollm2"]
    assert settings.models[0].package == "smollm2"


def test_the_shipped_config_registers_smollm2_first() -> None:
    settings = load_settings(Path(__file__).parent.parent / "config" / "models.toml")
    assert settings.models[0].name == "smollm2"
    assert "gemma3-270m" in [m.name for m in settings.models]


@pytest.mark.parametrize(
    "body, message",
    [
        ('[[models]]\nname = "a"\n', "exactly one of `path`, `package`, `source` or"),
        ('[[models]]\nname = "a"\npath = "x"\npackage = "smollm2"\n', "exactly one"),
        (
            '[[models]]\nname = "a"\npath = "x"\n[[models]]\nname = "b"\naliases = ["a"]\npath = "y"\n',
            "is used by",
        ),
        ('[[models]]\nname = "a"\npath = "x"\nn_ctx = 1\n', "n_ctx"),
        ("bogus = 1\n", "bogus"),
    ],
)
def test_invalid_configs_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_settings(path)


def test_byte_settings_take_units_from_file_environment_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "models.toml"
    config.write_text('kv_cache_disk_bytes = "2GiB"\nresponses_max_bytes = "512MB"\n')
    monkeypatch.setenv("HEARTH_MAX_LOADED_BYTES", "1.5GiB")
    settings = load_settings(config, kv_cache_ram_bytes="256MiB", max_body_bytes="64KiB")
    assert settings.kv_cache_disk_bytes == 2 << 30
    assert settings.responses_max_bytes == 512_000_000  # MB: powers of 1000
    assert settings.max_loaded_bytes == 3 << 29
    assert settings.kv_cache_ram_bytes == 256 << 20
    assert settings.max_body_bytes == 64 << 10
    assert load_settings(config, kv_cache_ram_bytes="1073741824").kv_cache_ram_bytes == 1 << 30
    with pytest.raises(ValueError, match="kv_cache_ram_bytes"):
        load_settings(config, kv_cache_ram_bytes="plenty")
    with pytest.raises(ValueError, match="max_body_bytes"):
        load_settings(config, max_body_bytes="1KB")  # below its 1024-byte floor
