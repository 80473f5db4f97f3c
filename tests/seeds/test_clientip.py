"""app/clientip.py: address lists and who the client is (TRUSTED_PROXIES decides when
X-Forwarded-For is believed: never by default)."""

from __future__ import annotations

import ipaddress

import pytest

from app.clientip import AllowListConfigError, address, client_address, networks_from_env, parse_networks
from app.config import Config, ConfigError

TRUSTED = parse_networks("10.0.0.0/8, 192.168.1.1, ::1", "TRUSTED_PROXIES")


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_lists_of_cidrs_and_single_addresses():
    nets = parse_networks(" 10.0.0.0/8 ,192.168.1.7, 2001:db8::/32,::1 ", "METRICS_ALLOWED_IPS")
    assert str(nets) == "10.0.0.0/8,192.168.1.7/32,2001:db8::/32,::1/128"
    assert ip("10.200.3.4") in nets and ip("192.168.1.7") in nets and ip("2001:db8::5") in nets
    assert ip("192.168.1.8") not in nets and ip("127.0.0.1") not in nets and ip("::2") not in nets
    assert None not in nets and "10.0.0.1" not in nets  # only addresses are ever members
    assert networks_from_env({"X": "  "}, "X") is None and networks_from_env({}, "X") is None


@pytest.mark.parametrize(
    "raw, words",
    [
        ("10.0.0.1/8", "host bits set (did you mean 10.0.0.0/8?)"),
        ("localhost", "not an IP address or CIDR"),
        ("10.0.0.0/33", "not an IP address or CIDR"),
        ("10.0.0.0/8,,::1", "entry 2 is empty"),
        ("10.0.0.0/8,", "entry 2 is empty"),
        (",", "no address in it"),
    ],
)
def test_malformed_lists_stop_startup_naming_the_variable(raw, words):
    for name in ("TRUSTED_PROXIES", "METRICS_ALLOWED_IPS", "ADMIN_ALLOWED_IPS"):
        with pytest.raises(ConfigError) as info:
            Config.from_env({name: raw})
        message = str(info.value)
        assert isinstance(info.value, AllowListConfigError)
        assert message.startswith(name) and words in message and "\n" not in message


def test_forwarded_for_is_never_believed_by_default():
    assert client_address("127.0.0.1", ["203.0.113.9"], None) == ip("127.0.0.1")
    assert client_address("10.1.1.1", ["203.0.113.9"], None) == ip("10.1.1.1")


def test_untrusted_peer_is_the_client_whatever_it_forwards():
    assert client_address("203.0.113.50", ["10.0.0.7"], TRUSTED) == ip("203.0.113.50")


def test_trusted_peer_rightmost_untrusted_hop_is_the_client():
    # client 198.51.100.4 -> proxy 10.0.0.2 -> proxy 10.0.0.3 (peer); a spoofed left entry is ignored
    assert client_address("10.0.0.3", ["1.2.3.4, 198.51.100.4, 10.0.0.2"], TRUSTED) == ip("198.51.100.4")
    # several header lines count as one list, in order
    assert client_address("10.0.0.3", ["1.2.3.4", "198.51.100.4", "10.0.0.2"], TRUSTED) == ip("198.51.100.4")
    # no header: the trusted proxy itself is the client
    assert client_address("10.0.0.3", [], TRUSTED) == ip("10.0.0.3")
    # every hop trusted: the leftmost
    assert client_address("10.0.0.3", ["10.0.0.1, 10.0.0.2"], TRUSTED) == ip("10.0.0.1")


def test_garbage_or_endless_chains_make_the_client_unknown():
    assert client_address("10.0.0.3", ["unknown"], TRUSTED) is None
    assert client_address("10.0.0.3", ["198.51.100.4, _hidden"], TRUSTED) is None
    assert client_address("10.0.0.3", [", ".join(["10.0.0.9"] * 40)], TRUSTED) is None
    assert client_address(None, [], TRUSTED) is None and client_address("", [], None) is None


def test_address_forms():
    assert address("::ffff:10.0.0.3") == ip("10.0.0.3")  # a dual-stack listener's IPv4 peer
    assert client_address("::ffff:10.0.0.3", ["198.51.100.4"], TRUSTED) == ip("198.51.100.4")
    assert address("[2001:db8::1]") == ip("2001:db8::1") and address("[2001:db8::1]:443") == ip("2001:db8::1")
    assert address("fe80::1%eth0") == ip("fe80::1")
    assert client_address("::1", ["2001:db8::7"], TRUSTED) == ip("2001:db8::7")
    assert address("not-an-ip") is None
