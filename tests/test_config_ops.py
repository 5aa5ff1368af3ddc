"""Configuration: clear errors, environment overrides, API key sources, the example file, `config check`,
and discovered models merged with explicit ones."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ops_harness import MultiHarness
from stackflow_openai.cli import main
from stackflow_openai.config import ConfigError, ModelSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.yaml"
LLM = "qwen2.5-0.5B-p256-ax630c"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ=environ or {})
    return str(err.value)


# ---- errors -----------------------------------------------------------------------------------------
def test_unknown_keys_are_named_with_their_line(tmp_path: Path) -> None:
    text = "server:\n  port: 9000\ndevices:\n  - name: a\n    host: 10.0.0.5\n    prot: 10001\nmodles: {}\n"
    message = error_of(write(tmp_path, text))
    assert "devices.0.prot (line 6): unknown key" in message
    assert "modles (line 7): unknown key" in message


def test_wrong_types_are_explained(tmp_path: Path) -> None:
    text = "server:\n  port: eighty\nauth:\n  protect_metrics: maybe\n"
    message = error_of(write(tmp_path, text))
    assert "server.port (line 2)" in message and "integer" in message
    assert "auth.protect_metrics (line 4)" in message and "boolean" in message


def test_cross_field_errors(tmp_path: Path) -> None:
    dup = "devices:\n  - name: a\n  - name: a\n"
    assert "device names must be unique: a" in error_of(write(tmp_path, dup))
    pinned = "models:\n  m:\n    devices: [nowhere]\n"
    assert "unknown device(s) nowhere" in error_of(write(tmp_path, pinned))
    proxy = "models:\n  m:\n    type: openai_proxy\n"
    assert "needs base_url" in error_of(write(tmp_path, proxy))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", environ={})


# ---- environment --------------------------------------------------------------------------------------
def test_environment_overrides_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 9000\ndevices:\n  - name: kit\n    host: 10.0.0.5\n")
    env = {
        "STACKFLOW_OPENAI__SERVER__PORT": "9100",
        "STACKFLOW_OPENAI__SERVER__CORS_ORIGINS": "[http://a.example, http://b.example]",
        "STACKFLOW_OPENAI__DEVICES__0__HOST": "10.0.0.6",
        "STACKFLOW_OPENAI__DEVICES__1__NAME": "kit2",
        "STACKFLOW_OPENAI__DISCOVERY__ENABLED": "false",
        "UNRELATED": "x",
    }
    settings = load_settings(path, environ=env)
    assert settings.server.port == 9100
    assert settings.server.cors_origins == ["http://a.example", "http://b.example"]
    assert [(d.name, d.host) for d in settings.devices] == [("kit", "10.0.0.6"), ("kit2", "127.0.0.1")]
    assert settings.discovery.enabled is False
    path.read_text()  # the file is untouched
    assert "9100" not in path.read_text()


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={"STACKFLOW_OPENAI__SERVER__PROT": "1"})
    assert "server.prot (from STACKFLOW_OPENAI__SERVER__PROT): unknown key" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={"STACKFLOW_OPENAI__SERVER__PORT": "many"})
    assert "(from STACKFLOW_OPENAI__SERVER__PORT)" in str(err.value)
    assert (
        load_settings(None, environ={"STACKFLOW_OPENAI__DEVICES__0__PORT": "10002"}).devices[0].port == 10002
    )


def test_api_keys_from_file_config_and_environment(tmp_path: Path) -> None:
    write(tmp_path, "# team keys\nsk-file-1\n\nsk-file-2\n", name="keys.txt")
    path = write(tmp_path, "auth:\n  api_keys: [sk-config]\n  api_keys_file: keys.txt\n")
    settings = load_settings(path, environ={"STACKFLOW_OPENAI_API_KEYS": "sk-env-1, sk-env-2"})
    assert settings.auth.key_values() == ["sk-config", "sk-file-1", "sk-file-2", "sk-env-1", "sk-env-2"]
    assert "sk-config" not in repr(settings) and "sk-file-1" not in str(settings.auth)
    missing = write(tmp_path, "auth:\n  api_keys_file: gone.txt\n")
    assert "auth.api_keys_file: cannot read" in error_of(missing)


# ---- the example file and field documentation ------------------------------------------------------------
def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, info in model.model_fields.items():
        out.append((prefix + name, info))
        annotation = info.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                out += _fields(candidate, f"{prefix}{name}.")
    return out


def test_every_field_is_described_and_in_the_example() -> None:
    example = EXAMPLE.read_text()
    for path, info in _fields(Settings) + _fields(ModelSettings, "models.*."):
        assert info.description, f"{path} has no description"
        assert f"{path.rsplit('.', 1)[-1]}:" in example, f"{path} is not in config.example.yaml"


def test_the_example_file_is_valid_and_means_the_defaults() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.model_dump() == Settings().model_dump()


def test_config_check_command(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert main(["config", "check", str(EXAMPLE)]) == 0
    assert "OK" in out.getvalue() and "api keys   none" in out.getvalue()
    bad = write(tmp_path, "server:\n  prot: 1\n")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert main(["config", "check", str(bad)]) == 2
    assert "INVALID" in err.getvalue() and "server.prot (line 2): unknown key" in err.getvalue()


# ---- discovery merged with explicit entries ---------------------------------------------------------------
def test_discovered_models_merged_with_explicit_entries_and_aliases() -> None:
    settings = Settings(
        models={
            LLM: ModelSettings(system_prompt="Be brief.", allow_n=False),  # overrides the discovered one
            "assistant": ModelSettings(device_model=LLM, pool_size=1),
            "narrator": ModelSettings(type="speech", voices={"alloy": "melotts-en-us"}),
            "ghost": ModelSettings(device_model="not-installed"),
        },
        aliases={"gpt-4o": "assistant"},
    )
    h = MultiHarness(["kit"], settings=settings).start()
    try:
        registry = h.registry
        ids = [e.id for e in registry.list()]
        assert ids.count(LLM) == 1 and "assistant" in ids and "narrator" in ids and "ghost" not in ids
        assert "whisper-tiny" in ids and "melotts-en-us" in ids  # discovered, served with defaults
        overridden = registry.get(LLM)
        assert overridden is not None and overridden.extra["system_prompt"] == "Be brief."
        assert overridden.allow_n is False
        assert registry.get("narrator").speech.voices == ["alloy"]  # type: ignore[union-attr]
        aliases = registry.aliases
        assert aliases["gpt-4o"] == "assistant"  # the config wins
        assert aliases["gpt-4o-mini"] == LLM  # the first text model found
        assert registry.get("whisper-1").kind == "transcription"  # type: ignore[union-attr]
        assert registry.get("tts-1").kind == "speech"  # type: ignore[union-attr]
        reply = h.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        assert reply.choices[0].message.content == "You said 1 word: x."
    finally:
        h.stop()


def test_discovery_off_serves_only_explicit_models() -> None:
    settings = Settings(models={"assistant": ModelSettings(device_model=LLM)})
    settings.discovery.enabled = False
    h = MultiHarness(["kit"], settings=settings).start()
    try:
        assert [e.id for e in h.registry.list()] == ["assistant"]
        assert h.registry.aliases["gpt-4o-mini"] == "assistant"
    finally:
        h.stop()


def test_serve_options_override_the_file_and_add_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from stackflow_openai.serve import build_settings, http_settings

    path = write(tmp_path, "server:\n  port: 9000\nauth:\n  api_keys: [sk-file]\n")
    monkeypatch.setenv("STACKFLOW_OPENAI_CONFIG", str(path))  # used when --config is not given
    monkeypatch.setenv("STACKFLOW_OPENAI_API_KEYS", "sk-env")
    args = argparse.Namespace(config=None, device=["10.0.0.9:10001"], host="0.0.0.0", port=None,
                              api_key=["sk-cli"])  # fmt: skip
    settings = build_settings(args)
    assert settings.server.port == 9000 and settings.server.host == "0.0.0.0"
    assert [(d.host, d.port) for d in settings.devices] == [("10.0.0.9", 10001)]
    assert http_settings(settings).api_keys == ("sk-file", "sk-env", "sk-cli")
