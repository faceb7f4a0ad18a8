"""Which IP addresses a connector may reach, and resolving a host once so the connection goes to the
address that was checked (no second lookup a rebinding DNS server could answer differently).

The classification is a pure function of the address: IPv4 and IPv6 special-purpose ranges, and the
IPv6 forms that carry an IPv4 address (IPv4-mapped and -compatible, 6to4, NAT64, ISATAP, Teredo), so a
private IPv4 address cannot be reached through its IPv6 spelling.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Resolves (host, port) to the IP addresses to try, in order: `system_resolver` in production, any
# function in tests (the seam that proves the connection goes where the check said).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

# Named here rather than left to `ipaddress.is_global`, whose lists differ between Python versions
# (3.11 counts multicast and 64:ff9b:1::/48 as global, for instance).
_REFUSED_IPV4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), why) for net, why in (
        ("0.0.0.0/8", "this-network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes 255.255.255.255, broadcast
    ))

_REFUSED_IPV6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), why) for net, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        # Deprecated (RFC 4291): a dual-stack host may route ::a.b.c.d to the IPv4 address a.b.c.d.
        ("::/96", "IPv4-compatible"),
        # Never valid on the wire; an IPv6 socket connects to the IPv4 address it carries.
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("64:ff9b:1::/48", "local-use NAT64"),  # RFC 8215: where the IPv4 address sits is the operator's choice
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo"),  # a client tunnel, never a server; its IPv4 addresses are obfuscated
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ))

_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_ISATAP_INTERFACE_IDS = (0x00005EFE, 0x02005EFE)


def refusal_reason(address: IPAddress) -> str | None:
    """Why a connector must not reach `address` (e.g. "loopback", "6to4 of 10.0.0.1: private"),
    or None for a public address."""
    if isinstance(address, ipaddress.IPv4Address):
        return next((why for net, why in _REFUSED_IPV4 if address in net), None)
    for net, why in _REFUSED_IPV6:
        if address in net:
            return why
    embedded = embedded_ipv4(address)
    if embedded is not None:
        kind, ipv4 = embedded
        inner = refusal_reason(ipv4)
        if inner is not None:
            return f"{kind} of {ipv4}: {inner}"
    return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address a tunnelled or translated IPv6 address leads to, with the form's name."""
    if address in _NAT64_WELL_KNOWN:  # DNS64 gives these for IPv4-only hosts: judged by what they lead to
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if (int(address) >> 32) & 0xFFFFFFFF in _ISATAP_INTERFACE_IDS:
        return "ISATAP", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class TargetRefused(Exception):
    """A host that cannot be resolved, or that resolves to an address no connector may reach."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (getaddrinfo), in its order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(host: str, port: int, *, resolve: Resolver, allow_private: bool) -> list[IPAddress]:
    """Resolve `host` once and check every address it gave (one bad address refuses the host: which one a
    connection would use is not ours to predict). The caller connects to these addresses and no other.

    `allow_private` skips the check (development and tests), never the single resolution."""
    try:
        found = await resolve(host, port)
    except OSError as exc:
        raise TargetRefused("invalid_target", f"cannot resolve host {host!r}: {exc}") from exc
    addresses: list[IPAddress] = []
    for text in found:
        address = ipaddress.ip_address(text)  # keeps a scope id (fe80::1%eth0): the socket needs it
        reason = None if allow_private else refusal_reason(address)
        if reason is not None:
            raise TargetRefused("target_not_allowed",
                                f"host {host!r} resolves to {address}, which is not public ({reason}); "
                                "PJ_WEBHOOK_ALLOW_PRIVATE=1 allows it (development and tests only)")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise TargetRefused("invalid_target", f"host {host!r} resolves to no address")
    return addresses
