from pathlib import Path

import pytest

from stackflow_openai.config import ConfigError, load_settings, parse_device


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    settings = load_settings(None)
    assert settings.server.port == 8000
    assert [(d.host, d.port) for d in settings.devices] == [("127.0.0.1", 10001)]


def test_full_file(tmp_path):
    settings = load_settings(
        write(
            tmp_path,
            """
server:
  port: 9000
devices:
  - name: kit
    host: 10.0.0.5
    port: 10001
models:
  assistant:
    device_model: qwen2.5-0.5B-p256-ax630c
    pool_size: 1
    system_prompt: "Be brief."
  big:
    type: openai_proxy
    base_url: http://gpu-box:8000/v1/
    model: llama-3-70b
aliases:
  gpt-4o-mini: assistant
""",
        )
    )
    assert settings.server.port == 9000
    assert settings.devices[0].name == "kit"
    assert settings.models["assistant"].pool_size == 1
    assert settings.models["big"].base_url == "http://gpu-box:8000/v1"
    assert settings.aliases == {"gpt-4o-mini": "assistant"}


def test_unknown_key_names_key_and_line(tmp_path):
    path = write(tmp_path, "server:\n  port: 9000\n  prot: 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "server.prot" in str(err.value)
    assert "line 3" in str(err.value)
    assert "unknown key" in str(err.value)


def test_wrong_type_is_explained(tmp_path):
    path = write(tmp_path, "models:\n  m:\n    pool_size: lots\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "models.m.pool_size" in str(err.value)
    assert "line 3" in str(err.value)


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "server: [1,\n"))


@pytest.mark.parametrize("text", ["localhost", "host:port", ":"])
def test_bad_device_strings(text):
    with pytest.raises(ConfigError):
        parse_device(text)


def test_device_string():
    device = parse_device("192.168.1.20:10001")
    assert (device.host, device.port) == ("192.168.1.20", 10001)
