"""AccessSettings from the environment: defaults, switches, and errors naming the variable."""

import pytest

from app.access.settings import AccessSettings
from app.config import Config, ConfigError


def test_defaults_are_open_and_in_memory():
    s = Config.from_env({}).access
    assert not s.auth_enabled and s.redis_url is None and not s.fail_closed
    assert s.database_url == "sqlite:///data/cot-proxy.db"
    assert s.max_concurrent_requests == 0 and s.strict_validation and not s.usage_accounting


def test_switches():
    s = AccessSettings.from_env(
        {
            "GATEWAY_BEARER_TOKEN": "tok-aaaaaaaa, tok-bbbbbbbb",
            "VIRTUAL_KEYS": "true",
            "REDIS_URL": "redis://:pw@127.0.0.1:6379/2",
            "RATE_LIMIT_FAIL_CLOSED": "yes",
            "MAX_CONCURRENT_REQUESTS": "8",
            "QUEUE_TIMEOUT_SECONDS": "2.5",
            "JWT_SECRET": "0123456789abcdef0123456789abcdef",
            "STRICT_VALIDATION": "false",
            "MAX_N": "4",
            "DATABASE_URL": "postgresql://u@db/cot",
        }
    )
    assert s.bearer_tokens == ("tok-aaaaaaaa", "tok-bbbbbbbb") and s.virtual_keys and s.usage_accounting
    assert s.fail_closed and s.max_concurrent_requests == 8 and s.max_queued_requests == 8
    assert s.queue_timeout == 2.5 and s.jwt_algorithms == ("HS256",) and not s.strict_validation and s.max_n == 4
    assert "pw" not in repr(s) and "tok-" not in repr(s)


def test_public_key_from_file(tmp_path):
    pem = "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n"
    (tmp_path / "k.pem").write_text(pem)
    s = AccessSettings.from_env({"JWT_PUBLIC_KEY": str(tmp_path / "k.pem")})
    assert s.jwt_public_key == pem and s.jwt_algorithms == ("RS256", "ES256") and s.auth_enabled


@pytest.mark.parametrize(
    "env, name",
    [
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"MAX_CONCURRENT_REQUESTS": "many"}, "MAX_CONCURRENT_REQUESTS"),
        ({"QUEUE_TIMEOUT_SECONDS": "-1"}, "QUEUE_TIMEOUT_SECONDS"),
        ({"RATE_LIMIT_FAIL_CLOSED": "maybe"}, "RATE_LIMIT_FAIL_CLOSED"),
        ({"GATEWAY_BEARER_TOKEN": "has space"}, "GATEWAY_BEARER_TOKEN"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"JWT_PUBLIC_KEY": "/no/such/file.pem"}, "JWT_PUBLIC_KEY"),
        ({"JWT_ALGORITHMS": "none", "JWT_SECRET": "0123456789abcdef0123456789abcdef"}, "JWT_ALGORITHMS"),
        ({"MAX_N": "0"}, "MAX_N"),
        ({"ADMIN_TOKEN": "x y"}, "ADMIN_TOKEN"),
    ],
)
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        Config.from_env(env)


def test_redis_password_not_in_error():
    with pytest.raises(ConfigError) as err:
        Config.from_env({"REDIS_URL": "http://user:s3cret@host"})
    assert "s3cret" not in str(err.value)


def test_bad_access_value_stops_gunicorn_naming_it():
    """The master validates access settings too (app/access/settings.py is standard library only)."""
    from tests.support import failed_start

    code, output = failed_start({"REDIS_URL": "http://not-redis"})
    assert code != 0
    assert "REDIS_URL" in output
