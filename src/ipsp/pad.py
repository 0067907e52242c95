"""The Peer Authorization Database (RFC 4301 section 4.4.3).

Who may talk to us, how each peer authenticates, and which inner addresses each peer may
claim: the 1993 working group's "authorization list", what hosts an IPSP router is
permitted to act as a proxy for. The key manager asks the PAD twice: which entry an
identity (or address) belongs to, and whether the traffic selectors a peer proposes lie
inside what that entry allows.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field
from typing import Iterable

from ipsp.errors import ConfigError, shown

__all__ = ["Identity", "Peer", "PeerAuthorizationDatabase"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7296 section 3.5 identification types, by the prefixes the configuration uses
_KINDS = {"ip": "ID_IPV4_ADDR/ID_IPV6_ADDR", "fqdn": "ID_FQDN", "email": "ID_RFC822_ADDR",
          "dn": "ID_DER_ASN1_DN", "keyid": "ID_KEY_ID"}


@dataclass(frozen=True)
class Identity:
    """A peer identity, e.g. ``Identity.parse("fqdn:gw1.example.net")``. FQDNs and e-mail
    domains compare case-insensitively; addresses in canonical form."""

    kind: str
    value: str

    @classmethod
    def parse(cls, text: str) -> "Identity":
        kind, sep, value = text.partition(":")
        if not sep or kind not in _KINDS or not value:
            raise ConfigError(f"identity {shown(text, 128)} must be one of {', '.join(k + ':...' for k in _KINDS)}")
        if kind == "ip":
            try:
                # an ID payload carries the packed address, which has no IPv6 zone: "fe80::1%eth0"
                # would never equal what a peer sends
                if "%" in value:
                    raise ValueError(value)
                value = str(ipaddress.ip_address(value))
            except ValueError:
                raise ConfigError(f"identity {shown(text, 128)} is not an IP address") from None
        elif kind == "fqdn":
            value = value.rstrip(".").lower()
        elif kind == "email":
            local, at, domain = value.rpartition("@")
            if not at or not local or not domain:
                raise ConfigError(f"identity {shown(text, 128)} is not an e-mail address")
            value = f"{local}@{domain.lower()}"
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class Peer:
    """One PAD entry."""

    name: str
    identities: tuple[Identity, ...]
    auth: str                                   # "psk" or "pubkey" (certificates, RFC 7427)
    psk: bytes | None = field(default=None, repr=False)
    ca: str | None = None                       # trust anchor for "pubkey" peers
    addresses: tuple[IPNetwork, ...] = ()       # where the peer's packets may come from (empty: anywhere)
    allowed: tuple[IPNetwork, ...] = ()         # inner prefixes the peer may claim

    def __post_init__(self) -> None:
        if not self.identities:
            raise ConfigError(f"peer {shown(self.name)} needs at least one identity")
        if self.auth not in ("psk", "pubkey"):
            raise ConfigError(f"peer {shown(self.name)}: auth must be 'psk' or 'pubkey', got {shown(self.auth)}")
        if self.auth == "psk" and not self.psk:
            raise ConfigError(f"peer {shown(self.name)} authenticates with a pre-shared key but none is set")
        if self.auth == "psk" and len(self.psk) < 16:
            raise ConfigError(f"peer {shown(self.name)}: a pre-shared key shorter than 16 bytes is refused")
        if self.auth == "pubkey" and not self.ca:
            raise ConfigError(f"peer {shown(self.name)} authenticates with certificates but names no CA")

    def may_claim(self, network: IPNetwork) -> bool:
        """Whether the peer may stand for every address of *network* (RFC 4301 4.4.3.4)."""
        return any(network.version == a.version and network.subnet_of(a) for a in self.allowed)

    def may_come_from(self, address) -> bool:
        addr = ipaddress.ip_address(address)
        return not self.addresses or any(addr.version == n.version and addr in n for n in self.addresses)


class PeerAuthorizationDatabase:
    """Peers by name and identity; an identity belongs to exactly one peer."""

    def __init__(self, peers: Iterable[Peer] = ()):
        self._lock = threading.Lock()
        self._by_name: dict[str, Peer] = {}
        self._by_id: dict[Identity, Peer] = {}
        for p in peers:
            self.add(p)

    def __iter__(self):
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def add(self, peer: Peer) -> Peer:
        with self._lock:
            if peer.name in self._by_name:
                raise ConfigError(f"peer {shown(peer.name)} already exists")
            for ident in peer.identities:
                if ident in self._by_id:
                    raise ConfigError(f"identity {ident} of peer {shown(peer.name)} already belongs to "
                                      f"peer {shown(self._by_id[ident].name)}")
            by_name, by_id = dict(self._by_name), dict(self._by_id)
            by_name[peer.name] = peer
            by_id.update({ident: peer for ident in peer.identities})
            self._by_name, self._by_id = by_name, by_id
        return peer

    def remove(self, name: str) -> Peer:
        with self._lock:
            peer = self._by_name[name]
            self._by_name = {k: v for k, v in self._by_name.items() if k != name}
            self._by_id = {k: v for k, v in self._by_id.items() if v is not peer}
        return peer

    def get(self, name: str) -> Peer:
        return self._by_name[name]

    def find(self, identity: Identity | str) -> Peer | None:
        ident = Identity.parse(identity) if isinstance(identity, str) else identity
        return self._by_id.get(ident)

    def authorize(self, identity: Identity | str, address, claims: Iterable[IPNetwork]) -> Peer:
        """The peer an authenticated identity maps to, if it may come from *address* and claim
        every prefix in *claims*; raises ConfigError naming the refusal otherwise."""
        peer = self.find(identity)
        if peer is None:
            raise ConfigError(f"no peer has the identity {identity}")
        if not peer.may_come_from(address):
            raise ConfigError(f"peer {shown(peer.name)} may not connect from {address}")
        for net in claims:
            if not peer.may_claim(net):
                raise ConfigError(f"peer {shown(peer.name)} may not claim {net}")
        return peer
