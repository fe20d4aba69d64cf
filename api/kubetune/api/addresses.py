"""Which IP addresses a tenant's S3 endpoint may reach: one rule for both planes.

The operator applies it to an address written in ``spec.s3.endpoint`` before any pod exists
(``kubetune.operator.storagepolicy``); the trainer applies it again to the address each connection
actually reached (``kubetune_trainer.egress``), so a public name that resolves inside the cluster or
the node (DNS rebinding) is refused too. Only globally routable addresses are public: loopback,
link-local (the instance metadata service), private, shared (100.64.0.0/10), reserved, unspecified
and multicast addresses are not, nor an IPv6 address that embeds one of those IPv4 addresses
(IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:wwxx:yyzz::``, Teredo).
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = "a loopback address"
LINK_LOCAL = "a link-local address (the instance metadata service lives there)"
PRIVATE_OR_RESERVED = "a private or reserved address"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo client), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def non_public_reason(address: Address) -> str | None:
    """Why ``address`` is not a public address (one of the constants above), or None when it is."""
    address = embedded_ipv4(address) or address
    if address.is_loopback:
        return LOOPBACK
    if address.is_link_local:
        return LINK_LOCAL
    if (
        not address.is_global
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
        or address.is_multicast
    ):
        return PRIVATE_OR_RESERVED
    return None


def parse_address(text: str) -> Address:
    """An address as a socket reports it (an IPv6 zone ``%eth0`` dropped); ValueError if it is none."""
    return ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
