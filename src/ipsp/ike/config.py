"""What the IKE daemon is told: ``[ike]`` and ``[[connection]]`` of the configuration file
(docs/configuration.md), parsed and checked here, all or nothing, every error naming its key.

A connection is strongSwan's ``connections.<name>`` with one child: which peer (a ``[[peer]]``
entry of the PAD: identities, PSK or CA, what it may claim), where it is, which inner
prefixes the tunnel joins, the proposals, lifetimes and what starts it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ipsp.errors import ConfigError, shown
from ipsp.ike.proposals import EspProposal, IkeProposal, parse_esp, parse_ike
from ipsp.pad import Identity
from ipsp.sa import _address, _network, check_replay_window, file_path, text, unknown_keys, warn_if_exposed

__all__ = ["IkeSettings", "Connection", "ike_settings", "connection", "DEFAULT_IKE", "DEFAULT_ESP"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_IKE = ("aes128gcm16-prfsha256-x25519", "aes256-sha256-x25519", "aes128-sha256-modp2048")
DEFAULT_ESP = ("aes128gcm16", "aes256-sha256", "chacha20poly1305")
_START = ("none", "start", "trap")


@dataclass(frozen=True)
class IkeSettings:
    """``[ike]``: the daemon as a whole."""

    local_id: Identity | None = None          # default: our outer address (ip:...)
    cert: str | None = None                   # our certificate (PEM/DER), for pubkey peers
    key: str | None = field(default=None, repr=False)   # its private key (path)
    chain: tuple[str, ...] = ()               # intermediate CA certificates we send
    cacerts: tuple[str, ...] = ()             # trust anchors besides the peers' own "ca"
    crls: tuple[str, ...] = ()
    port: int = 500
    nat_port: int = 4500
    cookie_threshold: int = 30                # half-open IKE SAs before cookies are asked (RFC 7296 2.6)
    half_open_timeout: float = 30.0
    retransmit_timeout: float = 2.0           # first retransmission; then times retransmit_base each
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    initial_contact: bool = True
    fragmentation: bool = True                # RFC 7383, announced and used when the peer announces it too
    fragment_size: int = 1280                 # the IP datagram an IKE fragment fills (strongSwan's default)


@dataclass(frozen=True)
class Connection:
    """``[[connection]]``: one IKE SA with one Child SA toward one peer."""

    name: str
    peer: str                                 # the PAD entry ([[peer]] name)
    remote: IPAddress | None                  # the peer's outer address; None: respond only
    local_ts: tuple[IPNetwork, ...]
    remote_ts: tuple[IPNetwork, ...]
    reqid: int
    ike_proposals: tuple[IkeProposal, ...]
    esp_proposals: tuple[EspProposal, ...]
    local_id: Identity | None = None          # default: [ike].local_id
    remote_id: Identity | None = None         # IDr we send when initiating (default: none sent)
    start: str = "none"                       # "start" at load, "trap" on the first packet, "none"
    ike_rekey: float = 14400.0
    child_rekey: float = 3600.0
    jitter: float = 0.1                       # a rekey happens up to this fraction earlier
    dpd: float = 30.0                         # liveness check after this long without a word; 0: off
    encap: bool = True                        # force ESP in UDP (as strongSwan's encap = yes)
    replay_window: int = 1024
    backend: str = "auto"


_IKE_KEYS = {"local_id", "cert", "key", "chain", "cacerts", "crls", "port", "nat_port", "cookie_threshold",
             "half_open_timeout", "retransmit_timeout", "retransmit_base", "retransmit_tries", "initial_contact",
             "fragmentation", "fragment_size"}
_CONN_KEYS = {"name", "peer", "remote", "local_ts", "remote_ts", "reqid", "ike_proposals", "esp_proposals",
              "local_id", "remote_id", "start", "ike_rekey", "child_rekey", "jitter", "dpd", "encap",
              "replay_window", "backend"}


def _identity(v: Any, key: str) -> Identity:
    if not isinstance(v, str):
        raise ConfigError("expected an identity such as 'fqdn:gw.example.net'", key=key)
    try:
        return Identity.parse(text(v, key))
    except ConfigError as exc:
        raise ConfigError(exc.message, key=key) from None


def _strs(v: Any, key: str) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(x, str) and x for x in items):
        raise ConfigError("expected a string or a non-empty list of strings", key=key)
    return tuple(text(x, f"{key}[{j}]" if isinstance(v, list) else key) for j, x in enumerate(items))


def _paths(v: Any, key: str) -> tuple[str, ...]:
    """Files to read at start: no NUL, encodable (open() would fail there, not here)."""
    items = _strs(v, key)
    return tuple(file_path(p, f"{key}[{j}]" if isinstance(v, list) else key) for j, p in enumerate(items))


def _number(v: Any, key: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ConfigError(f"expected {'an integer' if integer else 'a number'}", key=key, got=v)
    if not lo <= v <= hi:
        raise ConfigError(f"must be within {lo}..{hi}", key=key, got=v)
    return v


def ike_settings(t: Mapping[str, Any]) -> IkeSettings:
    try:
        unknown_keys(t, _IKE_KEYS, "ike")
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (known: {', '.join(sorted(_IKE_KEYS))})", key="ike") from None
    kw: dict[str, Any] = {}
    if "local_id" in t:
        kw["local_id"] = _identity(t["local_id"], "ike.local_id")
    for name in ("cert", "key"):
        if name in t:
            kw[name] = _paths(text(t[name], f"ike.{name}"), f"ike.{name}")[0]
    if ("cert" in kw) != ("key" in kw):
        raise ConfigError("a certificate needs its private key and the other way round",
                          key="ike.key" if "cert" in kw else "ike.cert")
    for name in ("chain", "cacerts", "crls"):
        if name in t:
            kw[name] = _paths(t[name], f"ike.{name}")
    for name, lo, hi, integer in (("port", 1, 65535, True), ("nat_port", 1, 65535, True),
                                  ("cookie_threshold", 0, 1 << 20, True), ("half_open_timeout", 1, 3600, False),
                                  ("retransmit_timeout", 0.05, 60, False), ("retransmit_base", 1, 4, False),
                                  ("retransmit_tries", 1, 20, True), ("fragment_size", 576, 65535, True)):
        if name in t:
            kw[name] = _number(t[name], f"ike.{name}", lo, hi, integer=integer)
    for flag in ("initial_contact", "fragmentation"):
        if flag in t:
            if not isinstance(t[flag], bool):
                raise ConfigError("expected true or false", key=f"ike.{flag}", got=t[flag])
            kw[flag] = t[flag]
    if kw.get("port", 500) == kw.get("nat_port", 4500):
        # both are bound: the second bind would fail at start (RFC 7296 2.23 keeps them apart)
        raise ConfigError("port and nat_port must differ", key="ike.nat_port")
    if "key" in kw:
        _private_key_mode(kw["key"])
    return IkeSettings(**kw)


def _private_key_mode(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return                   # ipsp.ike.certs reports what is wrong with it when it loads it
    warn_if_exposed(st, f"private key file {shown(path, 256)}", "ike.key")


def connection(t: Mapping[str, Any], key: str, index: int, peers: Mapping[str, Any]) -> Connection:
    """One ``[[connection]]`` table; *peers* maps PAD names to entries (the peer must exist)."""
    try:
        unknown_keys(t, _CONN_KEYS, key)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (known: {', '.join(sorted(_CONN_KEYS))})", key=key) from None
    for required in ("name", "peer", "local_ts", "remote_ts"):
        if required not in t:
            raise ConfigError(f"missing required key {required!r}", key=key)
    name = text(t["name"], f"{key}.name")
    peer = text(t["peer"], f"{key}.peer")
    if peer not in peers:
        raise ConfigError(f"no [[peer]] is named {shown(peer)}", key=f"{key}.peer")
    remote = _address(t["remote"], f"{key}.remote") if "remote" in t else None
    nets = {}
    for side in ("local_ts", "remote_ts"):
        items = _strs(t[side], f"{key}.{side}")
        where = (lambda j: f"{key}.{side}[{j}]") if isinstance(t[side], list) else (lambda j: f"{key}.{side}")
        nets[side] = tuple(_network(x, where(j)) for j, x in enumerate(items))
    props = {}
    for kind, parse, default in (("ike_proposals", parse_ike, DEFAULT_IKE), ("esp_proposals", parse_esp, DEFAULT_ESP)):
        words = _strs(t[kind], f"{key}.{kind}") if kind in t else default
        out = []
        for j, w in enumerate(words):
            try:
                out.append(parse(w))
            except ConfigError as exc:
                raise ConfigError(exc.message, key=f"{key}.{kind}[{j}]") from None
        props[kind] = tuple(out)
    kw: dict[str, Any] = {}
    for item in ("local_id", "remote_id"):
        if item in t:
            kw[item] = _identity(t[item], f"{key}.{item}")
    if "start" in t:
        if t["start"] not in _START:
            raise ConfigError(f"must be one of {', '.join(_START)}", key=f"{key}.start", got=t["start"])
        kw["start"] = t["start"]
        if t["start"] != "none" and remote is None:
            raise ConfigError(f"start = {t['start']!r} initiates: the connection needs 'remote'", key=f"{key}.start")
    for item, lo, hi in (("ike_rekey", 10, 30 * 86400), ("child_rekey", 10, 30 * 86400), ("jitter", 0, 0.5),
                         ("dpd", 0, 86400)):
        if item in t:
            kw[item] = float(_number(t[item], f"{key}.{item}", lo, hi))
    if "encap" in t:
        if not isinstance(t["encap"], bool):
            raise ConfigError("expected true or false", key=f"{key}.encap", got=t["encap"])
        kw["encap"] = t["encap"]
    if "replay_window" in t:
        kw["replay_window"] = check_replay_window(
            _number(t["replay_window"], f"{key}.replay_window", 0, 1 << 20, integer=True), f"{key}.replay_window")
    if "backend" in t:
        if t["backend"] not in ("auto", "openssl", "ipsecmb"):
            raise ConfigError("must be auto, openssl or ipsecmb", key=f"{key}.backend", got=t["backend"])
        kw["backend"] = t["backend"]
    reqid = _number(t.get("reqid", 0x10000 + index), f"{key}.reqid", 1, 0xFFFFFFFF, integer=True)
    return Connection(name, peer, remote, nets["local_ts"], nets["remote_ts"], reqid, props["ike_proposals"],
                      props["esp_proposals"], **kw)
