"""Which addresses a connector may reach (pj_dispatcher.connectors.addresses): every refused range at its
edges, every IPv6 spelling of a refused IPv4 address, and the single checked resolution."""

import ipaddress
from collections.abc import Sequence

import pytest

from pj_dispatcher.connectors.addresses import (
    _REFUSED_IPV4,
    _REFUSED_IPV6,
    TargetRefused,
    refusal_reason,
    resolve_checked,
    system_resolver,
)

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

REFUSED_IPV4 = {
    "0.0.0.0": "this-network", "0.255.255.255": "this-network",
    "10.0.0.1": "private", "10.255.255.255": "private",
    "100.64.0.1": "shared (carrier-grade NAT)", "100.127.255.255": "shared (carrier-grade NAT)",
    "127.0.0.1": "loopback", "127.255.255.254": "loopback",
    "169.254.169.254": "link-local (cloud metadata)", "169.254.0.1": "link-local (cloud metadata)",
    "172.16.0.1": "private", "172.31.255.255": "private",
    "192.0.0.8": "IETF protocol assignments", "192.0.2.10": "documentation",
    "192.88.99.1": "6to4 relay anycast", "192.168.1.1": "private",
    "198.18.0.1": "benchmarking", "198.19.255.255": "benchmarking",
    "198.51.100.7": "documentation", "203.0.113.9": "documentation",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast",
    "240.0.0.1": "reserved", "255.255.255.255": "reserved",
}

PUBLIC_IPV4 = ["1.1.1.1", "8.8.8.8", "93.184.216.34", "9.255.255.255", "11.0.0.0", "100.63.255.255",
               "100.128.0.0", "126.255.255.255", "128.0.0.0", "169.253.255.255", "169.255.0.0", "172.15.255.255",
               "172.32.0.0", "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255"]

REFUSED_IPV6 = {
    "::": "unspecified", "::1": "loopback",
    "::ffff:127.0.0.1": "IPv4-mapped", "::ffff:8.8.8.8": "IPv4-mapped",  # never valid on the wire
    "::127.0.0.1": "IPv4-compatible", "::8.8.8.8": "IPv4-compatible",
    "64:ff9b:1::808:808": "local-use NAT64",
    "100::1": "discard-only",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo", "2001::1": "Teredo",
    "2001:10::1": "IETF protocol assignments", "2001:db8::1": "documentation",
    "fc00::1": "unique local (private)", "fd12:3456:789a::1": "unique local (private)",
    "fe80::1": "link-local", "fe80::1%eth0": "link-local", "febf:ffff::1": "link-local",
    "fec0::1": "site-local", "ff02::1": "multicast", "ff05::1:3": "multicast",
    "2002:7f00:1::": "6to4 of 127.0.0.1: loopback",
    "2002:a9fe:a9fe::1": "6to4 of 169.254.169.254: link-local (cloud metadata)",
    "2002:a00:1::": "6to4 of 10.0.0.1: private", "2002:c0a8:101::": "6to4 of 192.168.1.1: private",
    "64:ff9b::7f00:1": "NAT64 of 127.0.0.1: loopback",
    "64:ff9b::a9fe:a9fe": "NAT64 of 169.254.169.254: link-local (cloud metadata)",
    "64:ff9b::a00:1": "NAT64 of 10.0.0.1: private",
    "64:ff9b::6440:1": "NAT64 of 100.64.0.1: shared (carrier-grade NAT)",
    "2a00:1450:4001:800:0:5efe:a00:1": "ISATAP of 10.0.0.1: private",
    "2a00:1450:4001:800:200:5efe:7f00:1": "ISATAP of 127.0.0.1: loopback",
}

PUBLIC_IPV6 = ["2a00:1450:4001:800::200e", "2606:4700:4700::1111", "2001:4860:4860::8888",
               "64:ff9b::808:808",  # what DNS64 answers for an IPv4-only public host
               "2002:808:808::1", "2a00:1450:4001:800:0:5efe:808:808", "2001:200::1"]


@pytest.mark.parametrize(("text", "why"), [*REFUSED_IPV4.items(), *REFUSED_IPV6.items()])
def test_refused_addresses_say_why(text: str, why: str) -> None:
    assert refusal_reason(ipaddress.ip_address(text)) == why


@pytest.mark.parametrize("text", PUBLIC_IPV4 + PUBLIC_IPV6)
def test_public_addresses_pass(text: str) -> None:
    assert refusal_reason(ipaddress.ip_address(text)) is None


def test_every_refused_range_is_refused_at_both_edges() -> None:
    for v4net, _ in _REFUSED_IPV4:
        assert refusal_reason(v4net[0]) and refusal_reason(v4net[-1]), v4net
    for v6net, _ in _REFUSED_IPV6:
        assert refusal_reason(v6net[0]) and refusal_reason(v6net[-1]), v6net


def ipv6_spellings(address: IPv4) -> dict[str, IPv6]:
    """Every IPv6 address that leads to `address`: mapped, compatible, 6to4, NAT64 and ISATAP forms."""
    v4 = int(address)
    return {
        "mapped": IPv6(0xFFFF << 32 | v4),
        "compatible": IPv6(v4),
        "6to4": IPv6(0x2002 << 112 | v4 << 80 | 1),
        "nat64": IPv6(int(IPv6("64:ff9b::")) | v4),
        "nat64-local": IPv6(int(IPv6("64:ff9b:1::")) | v4),
        "isatap": IPv6(int(IPv6("2a00:1450:4001:800::")) | 0x5EFE << 32 | v4),
        "isatap-universal": IPv6(int(IPv6("2a00:1450:4001:800::")) | 0x02005EFE << 32 | v4),
    }


@pytest.mark.parametrize("text", REFUSED_IPV4)
def test_no_ipv6_spelling_reaches_a_refused_ipv4_address(text: str) -> None:
    for form, address in ipv6_spellings(IPv4(text)).items():
        assert refusal_reason(address) is not None, (form, address)


@pytest.mark.parametrize("text", PUBLIC_IPV4)
def test_translations_of_public_ipv4_addresses_pass(text: str) -> None:
    """NAT64 (DNS64 networks), 6to4 and ISATAP of a public address lead to that public address."""
    spellings = ipv6_spellings(IPv4(text))
    for form in ("nat64", "6to4", "isatap", "isatap-universal"):
        assert refusal_reason(spellings[form]) is None, form
    for form in ("mapped", "compatible", "nat64-local"):  # never valid targets, whatever they carry
        assert refusal_reason(spellings[form]) is not None, form


# ---------------------------------------------------------------- resolve_checked


class Answers:
    """A resolver that gives fixed answers and counts the lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        return self.addresses


async def test_one_non_public_address_refuses_the_host() -> None:
    answers = Answers("93.184.216.34", "2002:a9fe:a9fe::1")
    with pytest.raises(TargetRefused) as err:
        await resolve_checked("hook.example.com", 443, resolve=answers, allow_private=False)
    assert err.value.code == "target_not_allowed"
    assert "2002:a9fe:a9fe::1" in err.value.message and "169.254.169.254" in err.value.message
    assert "PJ_WEBHOOK_ALLOW_PRIVATE" in err.value.message


async def test_public_addresses_are_returned_once_each_in_order_after_one_lookup() -> None:
    answers = Answers("2606:4700:4700::1111", "1.1.1.1", "2606:4700:4700::1111")
    addresses = await resolve_checked("hook.example.com", 8443, resolve=answers, allow_private=False)
    assert addresses == [IPv6("2606:4700:4700::1111"), IPv4("1.1.1.1")]
    assert answers.calls == [("hook.example.com", 8443)]


async def test_allow_private_skips_the_check_not_the_resolution() -> None:
    answers = Answers("10.0.0.5")
    assert await resolve_checked("sink", 80, resolve=answers, allow_private=True) == [IPv4("10.0.0.5")]
    assert answers.calls == [("sink", 80)]


async def test_unresolvable_or_empty_hosts_are_invalid_targets() -> None:
    async def fails(host: str, port: int) -> Sequence[str]:
        raise OSError(-2, "Name or service not known")

    for resolve in (fails, Answers()):
        with pytest.raises(TargetRefused) as err:
            await resolve_checked("nowhere.invalid", 443, resolve=resolve, allow_private=True)
        assert err.value.code == "invalid_target"


async def test_the_system_resolver_sees_localhost_as_loopback() -> None:
    assert IPv4("127.0.0.1") in [ipaddress.ip_address(a) for a in await system_resolver("localhost", 80)]
    with pytest.raises(TargetRefused) as err:
        await resolve_checked("localhost", 80, resolve=system_resolver, allow_private=False)
    assert err.value.code == "target_not_allowed" and "loopback" in err.value.message
