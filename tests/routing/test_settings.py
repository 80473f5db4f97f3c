"""The routing configuration file: substitution, validation errors naming key paths."""

from pathlib import Path

import pytest

from app.config import Config, ConfigError
from app.routing.settings import load

ROOT = Path(__file__).resolve().parents[2]


def read(text: str, tmp_path: Path, **env: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load(
        {"COT_PROXY_CONFIG": str(path), **env},
        target_base_url=None,
        upstream_api_key=None,
        connect_timeout=10,
        read_timeout=600,
    )


def test_example_file_is_valid():
    s = load(
        {"COT_PROXY_CONFIG": str(ROOT / "config.example.yaml"), "OPENAI_API_KEY": "k"},
        target_base_url=None,
        upstream_api_key=None,
        connect_timeout=10,
        read_timeout=600,
    )
    assert s.providers["openai"].api_key == "k"
    assert s.providers["ollama"].backends[0].base_url == "http://ollama:11434/v1/"
    assert s.providers["local"].backends[0].weight == 2
    assert s.models["fast"].route == ("local/llama3.1:8b", "openai/gpt-4o-mini")


def test_substitution_with_default(tmp_path):
    s = read("providers:\n  a: {base_url: 'http://${HOST:-localhost}:${PORT}/v1'}\n", tmp_path, PORT="8000")
    assert s.providers["a"].backends[0].base_url == "http://localhost:8000/v1/"


@pytest.mark.parametrize(
    "text, message",
    [
        ("providers:\n  openai: {base_url: nope}\n", "providers.openai.base_url: not a URL"),
        (
            "providers:\n  a: {base_url: 'http://x/v1', api_key: '${MISSING_KEY}'}\n",
            "providers.a.api_key: ${MISSING_KEY}",
        ),
        ("providers:\n  a: {base_url: 'http://x/v1', colour: red}\n", "providers.a.colour: unknown key"),
        ("providers:\n  a: {base_url: 'http://x/v1', balance: random}\n", "providers.a.balance"),
        ("providers:\n  a: {backends: [{base_url: 'http://x', weight: 0}]}\n", "providers.a.backends[0].weight"),
        ("providers:\n  a: {base_url: 'http://x/v1'}\nmodels:\n  f: {route: [b/m]}\n", "models.f.route[0]"),
        ("providers:\n  a: {base_url: 'http://x/v1'}\ndefault_provider: z\n", "default_provider"),
        ("providers: [1, 2]\n", "providers: must be a mapping"),
    ],
)
def test_errors_name_the_key_path(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.from_env({"COT_PROXY_CONFIG": str(path)})
    assert message in str(info.value)


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="COT_PROXY_CONFIG"):
        Config.from_env({"COT_PROXY_CONFIG": str(tmp_path / "none.yaml")})
