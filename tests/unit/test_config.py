"""Config.from_env: names kept, defaults, and one-line errors naming the variable."""

import pytest

from app.config import Config, ConfigError


def test_defaults_echo_mode():
    c = Config.from_env({})
    assert c.echo_mode and c.port == 5000 and c.host == "0.0.0.0"
    assert (c.connect_timeout, c.read_timeout, c.bounds.max_request_bytes) == (10.0, 600.0, 33554432)


def test_target_base_url_gets_trailing_slash():
    assert Config.from_env({"TARGET_BASE_URL": "http://h:8081/v1"}).target_base_url == "http://h:8081/v1/"
    assert Config.from_env({"TARGET_BASE_URL": "http://h:8081/v1/"}).target_base_url == "http://h:8081/v1/"


def test_backend_url_is_server_root():
    assert Config.from_env({"BACKEND_URL": "http://h:8081"}).target_base_url == "http://h:8081/v1/"
    both = Config.from_env({"BACKEND_URL": "http://b", "TARGET_BASE_URL": "http://t/v1/"})
    assert both.target_base_url == "http://t/v1/"


def test_timeout_alias_and_empty_is_unset():
    assert Config.from_env({"API_REQUEST_TIMEOUT": "3000"}).read_timeout == 3000
    assert Config.from_env({"REQUEST_TIMEOUT_SECONDS": "5", "API_REQUEST_TIMEOUT": "9"}).read_timeout == 5
    assert Config.from_env({"TARGET_BASE_URL": "  "}).echo_mode


def test_proxy_addr_is_listen_address_unless_host_port_given():
    assert (Config.from_env({"PROXY_ADDR": ":8090"}).host, Config.from_env({"PROXY_ADDR": ":8090"}).port) == (
        "0.0.0.0",
        8090,
    )
    assert Config.from_env({"PROXY_ADDR": ":8090", "PORT": "7000"}).port == 7000


@pytest.mark.parametrize(
    "env, name",
    [
        ({"TARGET_BASE_URL": "localhost:8080"}, "TARGET_BASE_URL"),
        ({"BACKEND_URL": "ftp://x"}, "BACKEND_URL"),
        ({"CONNECT_TIMEOUT_SECONDS": "ten"}, "CONNECT_TIMEOUT_SECONDS"),
        ({"API_REQUEST_TIMEOUT": "abc"}, "API_REQUEST_TIMEOUT"),
        ({"MAX_REQUEST_BYTES": "1.5"}, "MAX_REQUEST_BYTES"),
        ({"PORT": "-1"}, "PORT"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"GATEWAY_URL": "gw:9935"}, "GATEWAY_URL"),
        ({"PROXY_ADDR": "8090"}, "PROXY_ADDR"),
    ],
)
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_secrets_not_in_repr():
    c = Config.from_env({"UPSTREAM_API_KEY": "sk-secret", "TARGET_BASE_URL": "http://h/v1"})
    assert "sk-secret" not in repr(c)
