"""The old ModuleLLM-OpenAI-Plugin's config.yaml (issue 10 point 8): refused with a message that says what
its `server` meant, and `config migrate` writes an equivalent config. Fixtures: every version of the
plugin's own file (tests/fixtures/plugin_config/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackflow_openai.config import ConfigError, Settings, load_settings
from stackflow_openai.ops.migrate import migrate_plugin_config, render_migration

FIXTURES = Path(__file__).parent / "fixtures" / "plugin_config"
PLUGIN_FILES = sorted(FIXTURES.glob("config-*.yaml"))
NO_ENV: dict[str, str] = {}


def migrated(path: Path, tmp_path: Path) -> Settings:
    """Migrate, write, and read the result back as `serve --config` would."""
    raw = yaml.safe_load(path.read_text())
    new = tmp_path / "new.yaml"
    new.write_text(render_migration(migrate_plugin_config(raw), str(path)))
    return load_settings(new, environ=NO_ENV)


def test_every_version_of_the_plugins_file_is_here() -> None:
    assert len(PLUGIN_FILES) == 7


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.stem)
def test_the_plugins_config_is_refused_with_what_server_meant(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=NO_ENV)
    message = str(caught.value)
    assert "ModuleLLM-OpenAI-Plugin" in message
    assert "`server: {host, port}` is the address of the device's llm-sys daemon" in message
    assert f"stackflow-openai config migrate {path}" in message


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.stem)
def test_every_version_migrates_to_a_config_this_gateway_reads(path: Path, tmp_path: Path) -> None:
    settings = migrated(path, tmp_path)
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8000)  # where the plugin listened
    assert all(d.port == 10001 for d in settings.devices)  # the device, never the gateway's own port


def test_the_current_file_names_the_device(tmp_path: Path) -> None:
    settings = migrated(FIXTURES / "config-dcc871d.yaml", tmp_path)
    assert [(d.name, d.host, d.port) for d in settings.devices] == [("device", "127.0.0.1", 10001)]
    assert settings.models == {}  # the plugin discovered them at start, and so does the gateway


def test_an_early_file_keeps_its_models_pools_prompts_and_proxies(tmp_path: Path) -> None:
    settings = migrated(FIXTURES / "config-b12b845.yaml", tmp_path)
    assert [(d.host, d.port) for d in settings.devices] == [("192.168.20.56", 10001)]
    models = settings.models
    assert "llama2-7b" not in models  # type llama.cpp: no version of the plugin implemented it
    qwen = models["qwen2.5-0.5B-p256-ax630c"]
    assert (qwen.type, qwen.pool_size, qwen.system_prompt) == ("chat", 2, "You are a helpful assistant.")
    assert (models["internvl2.5-1B-ax630c"].type, models["internvl2.5-1B-ax630c"].pool_size) == ("chat", 2)
    proxy = models["gpt-3.5-turbo-proxy"]
    assert (proxy.type, proxy.base_url, proxy.model) == (
        "openai_proxy",
        "https://api.openai.com/v1",
        "gpt-3.5-turbo",
    )
    assert proxy.api_key is not None and proxy.api_key.get_secret_value() == "sk-"
    assert models["qwen-vl-plus"].type == "openai_proxy"  # vision_model: an upstream OpenAI-compatible API
    assert (models["melotts"].type, models["melotts"].device_model) == ("speech", "melotts_zh-cn")
    assert (models["whisper-tiny"].type, models["whisper-tiny"].language) == ("transcription", "en")


def test_an_alias_keeps_its_name_and_runs_its_device_model(tmp_path: Path) -> None:
    settings = migrated(FIXTURES / "config-c64f974.yaml", tmp_path)
    entry = settings.models["deepseek-r1-distill-qwen-1.5b"]
    assert (entry.type, entry.device_model, entry.pool_size) == ("chat", "deepseek-r1-1.5B-ax630c", 1)


def _discovered(host: str, mode: str, unit: str) -> dict[str, Any]:
    # An entry as the current plugin writes it into its config.yaml at start (services/model_list.py).
    return {
        "host": host, "port": 10001, "type": unit, "input": f"{unit}.utf-8", "model_name": mode,
        "response_format": f"{unit}.utf-8.stream", "object": f"{unit}.setup",
        "system_prompt": "You are a helpful assistant.", "memory_required": 560460, "pool_size": 2,
    }  # fmt: skip


def test_models_on_two_devices_stay_on_their_device() -> None:
    raw = {
        "server": {"host": "127.0.0.1", "port": 10001},
        "models": {
            "qwen2.5-0.5B-p256-ax630c": _discovered("127.0.0.1", "qwen2.5-0.5B-p256-ax630c", "llm"),
            "internvl2.5-1B-364-ax630c": _discovered("kit2.invalid", "internvl2.5-1B-364-ax630c", "vlm"),
        },
    }
    migration = migrate_plugin_config(raw)
    config = migration.config
    assert config["devices"] == [
        {"name": "device", "host": "127.0.0.1", "port": 10001},
        {"name": "device-2", "host": "kit2.invalid", "port": 10001},
    ]
    assert config["models"]["internvl2.5-1B-364-ax630c"]["devices"] == ["device-2"]
    assert any("memory_required" in note for note in migration.notes)  # what was left out is said


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stackflow_openai", "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_migrate_command_writes_a_file_config_check_accepts(tmp_path: Path) -> None:
    old, new = FIXTURES / "config-b12b845.yaml", tmp_path / "config.yaml"
    before = old.read_bytes()
    result = _cli("migrate", str(old), "-o", str(new))
    assert result.returncode == 0, result.stderr
    assert old.read_bytes() == before  # never modified
    check = _cli("check", str(new))
    assert check.returncode == 0, check.stderr
    assert "devices    device (192.168.20.56:10001)" in check.stdout
    assert "leftovers  owned (recorded in " in check.stdout  # only its own units are exited at start
    again = _cli("migrate", str(old), "-o", str(new))
    assert again.returncode == 2 and "--force" in again.stderr
    assert _cli("migrate", str(old), "-o", str(new), "--force").returncode == 0


def test_config_check_on_the_plugins_file_fails_clearly() -> None:
    result = _cli("check", str(FIXTURES / "config-dcc871d.yaml"))
    assert result.returncode == 2
    assert "llm-sys" in result.stderr and "config migrate" in result.stderr


def test_a_file_of_this_gateway_is_not_migrated(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("server:\n  port: 9000\ndevices:\n  - host: 127.0.0.1\n")
    result = _cli("migrate", str(mine))
    assert result.returncode == 2 and "nothing to migrate" in result.stderr


def test_what_the_old_server_key_meant_is_said_in_the_new_file() -> None:
    early = migrate_plugin_config(yaml.safe_load((FIXTURES / "config-b12b845.yaml").read_text()))
    assert any("(0.0.0.0:8000) was read by no version" in note for note in early.notes)
    current = migrate_plugin_config(yaml.safe_load((FIXTURES / "config-dcc871d.yaml").read_text()))
    assert any("(127.0.0.1:10001) is the device" in note for note in current.notes)
    text = render_migration(current, "old.yaml")
    assert text.startswith("# stackflow-openai config, migrated by")
    assert "#   - the plugin's `server` (127.0.0.1:10001) is the device" in text


def test_a_file_with_no_device_address_gets_the_local_device() -> None:
    migration = migrate_plugin_config(
        {"models": {"big": {"type": "openai_proxy", "base_url": "http://gpu.invalid/v1"}}}
    )
    assert migration.config["devices"] == [{"name": "device", "host": "127.0.0.1", "port": 10001}]
    assert any("no device address" in note for note in migration.notes)


def test_serve_refuses_the_plugins_file_instead_of_listening_on_the_devices_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stackflow_openai.cli import main

    assert main(["serve", "--config", str(FIXTURES / "config-dcc871d.yaml")]) == 2
    assert "config migrate" in capsys.readouterr().err
