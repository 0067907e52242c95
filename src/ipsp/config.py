"""Configuration files (TOML): the only place ipsp parses configuration.

Two schemas share the ``[[sa]]`` table:

- an SA file for ``ipsp trace`` (:func:`load_sa_file`): ``[[sa]]`` tables and optionally a
  top-level ``allow_insecure = true`` that admits the legacy transforms (DES, HMAC-MD5);
- the engine's configuration file (:func:`load_config`, docs/configuration.md): ``[engine]``,
  ``[defaults]``, ``[[peer]]`` (the PAD), ``[[policy]]`` (the SPD) and ``[[sa]]`` (manually
  keyed SAs, installed through the key-manager API).

Loading is all or nothing and pure: the result is immutable, and the first error raises
ConfigError naming the file and the full key path (``policy[3].dport``).
"""

from __future__ import annotations

import ipaddress
import functools
import os
import tomllib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType
from typing import Any, Mapping

from ipsp.errors import ConfigError, bound, notes_on_success, shown
from ipsp.files import FileError, read_input
from ipsp.ike.config import Connection, IkeSettings, connection, ike_settings
from ipsp.pad import Identity, Peer
from ipsp.sa import _KNOWN as _SA_KEYS
from ipsp.sa import (SAConfig, _address, _bytes, _network, file_path, sa_from_mapping, text, unknown_keys,
                     warn_if_exposed)
from ipsp.sad import Lifetime, Lifetimes
from ipsp.spd import ANY, Action, Direction, Policy, PolicySelector

__all__ = ["load_sa_file", "sas_from_document", "load_config", "config_from_document", "read_toml",
           "Config", "EngineSettings", "GatewaySettings", "ManualSA"]

_SECRET_KEYS = ("enc_key", "auth_key", "psk")


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML document at *path*: the one reader of ipsp's TOML files. Any failure,
    a nesting that exhausts the parser's stack included, is a ConfigError naming the file. A
    file that holds secrets inline and is readable by others draws a warning."""
    where = str(path)
    try:
        data, st = read_input(path, None)
    except FileError as exc:
        raise ConfigError(f"cannot read: {exc.problem}" if exc.unreadable else exc.problem, path=where) from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=where) from None
    except UnicodeDecodeError:
        raise ConfigError("not valid TOML: not UTF-8 text", path=where) from None
    except RecursionError:
        raise ConfigError("not valid TOML for ipsp: nested too deeply", path=where) from None
    except MemoryError:
        raise ConfigError("too large to parse", path=where) from None
    except ValueError as exc:       # tomllib's int() of an integer past Python's 4300-digit limit (3.11+)
        raise ConfigError(f"not valid TOML: {exc}", path=where) from None
    if _inline_secret(doc):
        with notes_on_success(where):
            warn_if_exposed(st, "this file holds keys and")
    return doc


def _inline_secret(doc: Mapping[str, Any]) -> bool:
    """Whether a document writes a key itself (not a {file} or {env} reference) anywhere one goes."""
    tables = [doc.get("defaults")] + [t for name in ("sa", "peer") for t in _maybe_list(doc.get(name))]
    return any(isinstance(t, dict) and isinstance(t.get(k), str) for t in tables for k in _SECRET_KEYS)


def _maybe_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _whole(document_function):
    """Loading raises ConfigError and nothing else: a document built in Python (or from JSON
    on the control socket) can nest deeper than any check's recursion. Warnings come out only
    when it succeeds."""
    @functools.wraps(document_function)
    def wrapper(doc, *, path=None, env=None, **options):
        try:
            with notes_on_success(path):
                return document_function(doc, path=path, env=env, **options)
        except RecursionError:
            raise ConfigError("nested too deeply", path=path) from None
        except MemoryError:
            raise ConfigError("too large", path=path) from None
    return wrapper


def sa_tables(doc: Mapping[str, Any], *, path: str | None = None) -> tuple[list[Mapping[str, Any]], bool]:
    """The ``[[sa]]`` tables of an SA file's document and its allow_insecure: the SA-file
    schema, for ``ipsp trace`` and ``ipsp sa add --file`` alike."""
    if not isinstance(doc, Mapping):
        raise ConfigError("an SA file is a table of [[sa]] tables", path=path)
    try:
        unknown_keys(doc, {"sa", "allow_insecure"}, None, "top-level ")
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (an SA file holds [[sa]] tables and allow_insecure)", path=path) from None
    allow = doc.get("allow_insecure", False)
    if not isinstance(allow, bool):
        raise ConfigError("expected true or false", path=path, key="allow_insecure", got=allow)
    entries = doc.get("sa")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("no SAs: expected one or more [[sa]] tables", path=path, key="sa")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ConfigError("an [[sa]] entry must be a table", path=path, key=f"sa[{i}]", got=entry)
    return entries, allow


@_whole
def sas_from_document(doc: Mapping[str, Any], *, path: str | None = None,
                      env: Mapping[str, str] | None = None, icv_unchecked: bool = False) -> list[SAConfig]:
    """SAConfigs from a parsed document's ``[[sa]]`` array; checks that SPIs are unique per
    destination (the inbound lookup key, RFC 4301 4.1). ``icv_unchecked``: see SAConfig."""
    entries, allow = sa_tables(doc, path=path)
    sas: list[SAConfig] = []
    seen: dict[tuple[int, bytes], int] = {}
    for i, entry in enumerate(entries):
        try:
            sa = sa_from_mapping(entry, key=f"sa[{i}]", allow_insecure=allow, env=env, icv_unchecked=icv_unchecked)
        except ConfigError as exc:
            raise ConfigError(exc.message, path=path, key=exc.key) from None
        lookup = (sa.spi, sa.dst.packed)
        if lookup in seen:
            raise ConfigError(f"SPI {sa.spi:#x} to {sa.dst} is already used by sa[{seen[lookup]}]",
                              path=path, key=f"sa[{i}].spi")
        seen[lookup] = i
        sas.append(sa)
    return sas


def load_sa_file(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
                 icv_unchecked: bool = False) -> list[SAConfig]:
    """The SAs of a TOML file, validated; raises ConfigError naming file and key path."""
    with notes_on_success(str(path)):
        return sas_from_document(read_toml(path), path=str(path), env=env, icv_unchecked=icv_unchecked)


# -- the configuration file -----------------------------------------------------------------

@dataclass(frozen=True)
class ManualSA:
    """One manually keyed SA, to install with ``KeyManagerAPI.add_sa``."""

    config: SAConfig
    direction: str                                   # "in" | "out"
    reqid: int = 0
    lifetimes: Lifetimes = Lifetimes()
    label: str | None = None
    group_source: IPv4Address | IPv6Address | None = None   # RFC 5374 group SA: the sender


@dataclass(frozen=True)
class EngineSettings:
    rekey_grace: float = 5.0          # seconds an old inbound SA lives on after a rekey (strongSwan: 5 s)
    control_socket: str | None = None # Unix socket for `ipsp sa list` etc. against a running engine
    log_interval: float = 1.0         # rate limit for per-reason drop log lines, seconds


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``: what ``ipsp gateway`` needs beyond the engine (docs/configuration.md)."""

    address: tuple[IPv4Address | IPv6Address, ...]   # inner-side source of ICMP errors, one per family
    local: IPv4Address | IPv6Address                 # outer address: bound, and the SAs' local end
    tun: str = "ipsp0"
    routes: tuple[IPv4Network | IPv6Network, ...] = ()
    tun_mtu: int = 1500
    outer: str = "udp"                # "udp" (ESP in UDP, RFC 3948) or "esp" (IP protocol 50)
    udp_port: int = 4500
    path_mtu: int = 1500              # initial outer path MTU toward every peer
    batch: int = 256                  # packets per read burst and engine call
    keepalive: float = 20.0           # NAT keepalive interval (RFC 3948 2.3), 0: off

    def source_for(self, version: int) -> IPv4Address | IPv6Address | None:
        """The inner-side address of that IP version (the source of ICMP errors), if any."""
        return next((a for a in self.address if a.version == version), None)


@dataclass(frozen=True)
class Config:
    path: str | None
    engine: EngineSettings
    defaults: Mapping[str, Any] = field(repr=False, hash=False)   # what [defaults] said; may hold keys
    peers: tuple[Peer, ...]
    policies: tuple[Policy, ...]
    sas: tuple[ManualSA, ...]
    gateway: GatewaySettings | None = None                         # [gateway], for ipsp gateway
    ike: IkeSettings | None = None                                 # [ike], the IKEv2 daemon
    connections: tuple[Connection, ...] = ()                       # [[connection]]: IKEv2-keyed tunnels


_TOP = {"allow_insecure", "engine", "defaults", "peer", "policy", "sa", "gateway", "ike", "connection"}
_ENGINE = {"rekey_grace", "control_socket", "log_interval"}
_GATEWAY = {"tun", "address", "routes", "tun_mtu", "outer", "local", "udp_port", "path_mtu", "batch", "keepalive"}
_PEER = {"name", "id", "auth", "psk", "ca", "addresses", "allowed"}
_POLICY = {"direction", "action", "src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code",
           "priority", "reqid", "label"}
_SA_EXTRA = {"direction", "reqid", "label", "lifetime", "replay", "senders", "source"}
_NO_DEFAULT = {"spi", "direction", "senders", "source"}   # they pick out one SA: a default would repeat it
_LIMITS = {"bytes": "bytes", "packets": "packets", "seconds": "add_seconds", "use_seconds": "use_seconds"}
_DIRECTIONS = {"out": Direction.OUT, "in": Direction.IN}
_ACTIONS = {"protect": Action.PROTECT, "bypass": Action.BYPASS, "discard": Action.DISCARD}
_PROTOS = {"any": ANY, "icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "sctp": 132}
_PORTED = {6, 17, 132}                 # protocols with ports (RFC 4301 4.4.1.1)
_ICMP = {1: 4, 58: 6}                  # ICMP protocol -> the IP version it belongs to
_REPLAY = ("shared", "per-sender", "off")
_UINT32 = 0xFFFFFFFF
_ANY = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


@_whole
def config_from_document(doc: Mapping[str, Any], *, path: str | None = None,
                         env: Mapping[str, str] | None = None) -> Config:
    """A Config from a parsed TOML document; ``env`` (default os.environ) resolves
    ``{env = "..."}`` secrets. Raises ConfigError with ``path`` and the key path."""
    try:
        return _config(doc, path, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=path, key=exc.key) from None


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """The configuration file at *path*, validated as a whole."""
    with notes_on_success(str(path)):
        return config_from_document(read_toml(path), path=str(path), env=env)


def _config(doc: Mapping[str, Any], path: str | None, env: Mapping[str, str]) -> Config:
    if not isinstance(doc, Mapping):
        raise ConfigError("a configuration document is a table")
    unknown_keys(doc, _TOP, None, "top-level ")
    allow = doc.get("allow_insecure", False)
    if not isinstance(allow, bool):
        raise ConfigError("expected true or false", key="allow_insecure")
    engine = _engine(_table(doc.get("engine", {}), "engine"))
    defaults = _defaults(_table(doc.get("defaults", {}), "defaults"), allow, env)
    peers = [_peer(t, f"peer[{i}]", env) for i, t in enumerate(_tables(doc, "peer"))]
    _unique_peers(peers)
    policies = [_policy(t, f"policy[{i}]") for i, t in enumerate(_tables(doc, "policy"))]
    sas: list[ManualSA] = []
    where_sa: list[tuple[str, ManualSA]] = []
    seen: dict[tuple, str] = {}
    for i, t in enumerate(_tables(doc, "sa")):
        for where, msa in _sa(t, f"sa[{i}]", defaults, allow, env):
            where_sa.append((f"sa[{i}]", msa))
            gs = msa.group_source
            lookup = (msa.direction, msa.config.spi, msa.config.dst, gs)   # the SAD's key (RFC 4301 4.1)
            if lookup in seen:
                sender = f" from sender {gs}" if gs else ""
                raise ConfigError(f"{msa.direction}bound SA with SPI {msa.config.spi:#x} to {msa.config.dst}"
                                  f"{sender} is already defined by {seen[lookup]}",
                                  key=where if "senders" in where else f"{where}.spi")
            seen[lookup] = where
            sas.append(msa)
    gateway = None
    if "gateway" in doc:
        gateway = _gateway(_table(doc["gateway"], "gateway"))
        _gateway_fits(gateway, where_sa)
    ike = ike_settings(_table(doc["ike"], "ike")) if "ike" in doc else None
    connections = _connections(doc, {p.name: p for p in peers}, ike, sas, policies)
    if connections and ike is None:
        ike = IkeSettings()
    if connections and gateway is not None:
        _gateway_runs(gateway, ike, connections)
    return Config(path, engine, _freeze(defaults), tuple(peers), tuple(policies), tuple(sas), gateway, ike,
                  connections)


# -- [ike] and [[connection]] (ipsp.ike.config) ---------------------------------------------

def _connections(doc: Mapping[str, Any], peers: Mapping[str, Peer], ike: IkeSettings | None,
                 sas: list[ManualSA], policies: list[Policy]) -> tuple[Connection, ...]:
    out: list[Connection] = []
    names: dict[str, int] = {}
    reqids: dict[int, str] = {m.reqid: "sa" for m in sas if m.reqid}
    reqids.update({p.reqid: "policy" for p in policies if p.reqid})
    for i, t in enumerate(_tables(doc, "connection")):
        key = f"connection[{i}]"
        c = connection(t, key, i, peers)
        if c.name in names:
            raise ConfigError(f"connection name {shown(c.name)} is already used by connection[{names[c.name]}]",
                              key=f"{key}.name")
        names[c.name] = i
        if c.reqid in reqids:
            # the engine joins policies and SAs by reqid: a connection's must be its own
            raise ConfigError(f"reqid {c.reqid} is already used by {reqids[c.reqid]}", key=f"{key}.reqid")
        reqids[c.reqid] = key
        if peers[c.peer].auth == "pubkey" and (ike is None or ike.cert is None):
            raise ConfigError(f"peer {shown(c.peer)} authenticates with certificates: [ike] needs cert and key",
                              key=f"{key}.peer")
        out.append(c)
    return tuple(out)


def _gateway_runs(gw: GatewaySettings, ike: IkeSettings, connections: tuple[Connection, ...]) -> None:
    """What ``ipsp gateway`` needs of its IKE daemon and connections: IKE speaks from the
    gateway's one outer address and takes NAT-T traffic on its udp_port (binding ike.port
    beside it), and ESP in UDP needs that socket."""
    if gw.outer == "udp" and ike.port == gw.udp_port:
        raise ConfigError(f"IKE's port must differ from gateway.udp_port ({gw.udp_port}), where the gateway "
                          "takes IKE's NAT-T traffic", key="ike.port")
    for i, c in enumerate(connections):
        if c.encap and gw.outer != "udp":
            raise ConfigError('encap = true needs gateway.outer = "udp"', key=f"connection[{i}].encap")
        if c.remote is not None and c.remote.version != gw.local.version:
            raise ConfigError(f"remote is IPv{c.remote.version}, the gateway's local address {gw.local} "
                              f"IPv{gw.local.version}", key=f"connection[{i}].remote")


# -- small checks ---------------------------------------------------------------------------

def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError("expected a table", key=key, got=value)
    return value


def _tables(doc: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    entries = doc.get(name, [])
    if not isinstance(entries, list):
        raise ConfigError(f"expected an array of tables ([[{name}]])", key=name, got=entries)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"a [[{name}]] entry must be a table", key=f"{name}[{i}]", got=entry)
    return entries


def _integer(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("expected an integer", key=key, got=value)
    if not lo <= value <= hi:
        raise ConfigError(f"must be {bound(lo)}..{bound(hi)}", key=key, got=value)
    return value


def _seconds(value: Any, key: str, *, positive: bool) -> float:
    # the bounds also refuse NaN, and 400-digit integers (tomllib's are unbounded) before float()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1e18 < value < 1e18:
        raise ConfigError("expected a number of seconds", key=key, got=value)
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"must be {'above' if positive else 'at least'} 0", key=key, got=value)
    return float(value)


def _choice(value: Any, choices: Mapping[str, Any] | tuple[str, ...], key: str) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"must be one of {', '.join(choices)}", key=key, got=value)
    return choices[value] if isinstance(choices, Mapping) else value


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError("expected an array", key=key, got=value)
    return value


def _prefix(value: Any, key: str):
    if not isinstance(value, str):          # ipaddress would take an integer (or a bool) as an address
        raise ConfigError("expected a prefix such as '10.1.0.0/16'", key=key, got=value)
    return _network(value, key)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# -- [engine] -------------------------------------------------------------------------------

def _engine(t: dict[str, Any]) -> EngineSettings:
    unknown_keys(t, _ENGINE, "engine")
    kw: dict[str, Any] = {}
    for name in ("rekey_grace", "log_interval"):
        if name in t:
            kw[name] = _seconds(t[name], f"engine.{name}", positive=False)
    if "control_socket" in t:
        kw["control_socket"] = _socket_path(t["control_socket"], "engine.control_socket")
    return EngineSettings(**kw)


# -- [gateway] ------------------------------------------------------------------------------

_IFNAMSIZ = 16
# Linux's dev_valid_name(): below IFNAMSIZ bytes (TUNSETIFF takes the UTF-8 bytes), not "."
# or "..", no '/', ':' or byte its isspace() takes (which, in the kernel's Latin-1 ctype table,
# includes 0xa0: "à" is c3 a0)
_IF_SPACE = frozenset(b" \t\n\v\f\r\xa0")


def interface_name(value: Any, key: str) -> str:
    name = text(value, key)
    raw = name.encode()
    if len(raw) >= _IFNAMSIZ:
        raise ConfigError(f"not a network interface name: at most {_IFNAMSIZ - 1} bytes (this one is {len(raw)} "
                          "as UTF-8)", key=key)
    if name in (".", "..") or any(b in _IF_SPACE or b in b"/:\0" for b in raw):
        raise ConfigError("not a network interface name (Linux refuses '.', '..', '/', ':', NUL and spaces)",
                          key=key, got=name)
    return name


# AF_UNIX: sun_path is 108 bytes, the path's bytes and a NUL (unix(7))
_SUN_PATH = 108


def _socket_path(value: Any, key: str) -> str:
    path = file_path(value, key)
    if len(os.fsencode(path)) >= _SUN_PATH:
        raise ConfigError(f"a Unix socket path is at most {_SUN_PATH - 1} bytes (unix(7)); this one is "
                          f"{len(os.fsencode(path))}", key=key)
    return path


_OUTER = ("udp", "esp")
_MIN_MTU = {4: 576, 6: 1280}     # RFC 1122 3.3.3 (what every IPv4 host reassembles), RFC 8200 5


def _gateway(t: dict[str, Any]) -> GatewaySettings:
    unknown_keys(t, _GATEWAY, "gateway")
    for required in ("local", "address"):
        if required not in t:
            raise ConfigError(f"missing required key {required!r}", key="gateway")
    kw: dict[str, Any] = {}
    if "tun" in t:
        kw["tun"] = interface_name(t["tun"], "gateway.tun")
    local = _address(t["local"], "gateway.local")
    if local.is_unspecified or local.is_multicast or local.is_loopback:
        raise ConfigError(f"must be a unicast address of this host (the outer packets' source), got {local}",
                          key="gateway.local")
    kw["local"] = local
    addresses = t["address"] if isinstance(t["address"], list) else [t["address"]]
    if not addresses:
        raise ConfigError("give the gateway's inner-side address (the source of the ICMP errors it sends)",
                          key="gateway.address")
    by_version: dict[int, IPv4Address | IPv6Address] = {}
    for j, value in enumerate(addresses):
        where = f"gateway.address[{j}]" if isinstance(t["address"], list) else "gateway.address"
        a = _address(value, where)
        if a.is_unspecified or a.is_multicast:
            raise ConfigError(f"must be a unicast address, got {a}", key=where)
        if a.version in by_version:
            raise ConfigError(f"a second IPv{a.version} address: one per IP version", key=where)
        by_version[a.version] = a
    kw["address"] = tuple(by_version.values())
    routes = _list(t.get("routes", []), "gateway.routes")
    kw["routes"] = tuple(_prefix(v, f"gateway.routes[{j}]") for j, v in enumerate(routes))
    for j, net in enumerate(kw["routes"]):
        if local in net:
            # the gateway's own outer packets would be routed into its tunnel
            raise ConfigError(f"{net} covers the gateway's outer address {local}", key=f"gateway.routes[{j}]")
        if net in kw["routes"][:j]:
            raise ConfigError(f"{net} is listed twice", key=f"gateway.routes[{j}]")
    kw["outer"] = _choice(t.get("outer", "udp"), _OUTER, "gateway.outer")
    kw["udp_port"] = _integer(t.get("udp_port", 4500), "gateway.udp_port", 1, 65535)
    floor = _MIN_MTU[local.version]
    kw["path_mtu"] = _integer(t.get("path_mtu", 1500), "gateway.path_mtu", floor, 65535)
    low = 1280 if any(n.version == 6 for n in kw["routes"]) else 68      # RFC 8200 5, RFC 791
    kw["tun_mtu"] = _integer(t.get("tun_mtu", 1500), "gateway.tun_mtu", low, 65535)
    kw["batch"] = _integer(t.get("batch", 256), "gateway.batch", 1, 1024)      # recvmmsg: UIO_MAXIOV
    if "keepalive" in t:
        kw["keepalive"] = _seconds(t["keepalive"], "gateway.keepalive", positive=False)
    return GatewaySettings(**kw)


def _gateway_fits(gw: GatewaySettings, sas: list[tuple[str, ManualSA]]) -> None:
    """The file's SAs must be usable through the gateway's one outer socket: its address
    at their local end, its encapsulation, its UDP port; and no route may send a peer's
    ESP into the tunnel."""
    udp = gw.outer == "udp"
    for key, m in sas:
        c = m.config
        if c.udp != udp:
            raise ConfigError(f"gateway.outer is {gw.outer!r}: SAs need " + ("encap = 'udp'" if udp else "no encap"),
                              key=f"{key}.encap")
        if c.mode != "tunnel":
            continue           # transport: the packet's own addresses, whatever they are
        mine, peer, name = (c.src, c.dst, "src") if m.direction == "out" else (c.dst, c.src, "dst")
        if mine != gw.local and not mine.is_multicast:
            raise ConfigError(f"{m.direction}bound SA's {name} must be the gateway's local address {gw.local}, "
                              f"got {mine}", key=f"{key}.{name}")
        for j, net in enumerate(gw.routes):
            if peer.version == net.version and peer in net:
                raise ConfigError(f"{net} covers the peer {peer} of {key}: its ESP would be routed into the tunnel",
                                  key=f"gateway.routes[{j}]")
        if udp:
            port, pname = (c.sport, "sport") if m.direction == "out" else (c.dport, "dport")
            if port != gw.udp_port:
                raise ConfigError(f"must be the gateway's udp_port {gw.udp_port}, got {port}", key=f"{key}.{pname}")


# -- lifetimes (RFC 4301 4.4.2.1) -----------------------------------------------------------

def _lifetimes(t: dict[str, Any], key: str) -> Lifetimes:
    unknown_keys(t, {f"{w}_{k}" for w in ("soft", "hard") for k in _LIMITS}, key)
    soft: dict[str, Any] = {}
    hard: dict[str, Any] = {}
    for name, attr in _LIMITS.items():
        s, h = (_limit(t.get(f"{w}_{name}"), f"{key}.{w}_{name}", name) for w in ("soft", "hard"))
        # the soft limit starts a rekey; at or past the hard one the SA is already dead
        if s is not None and h is not None and s >= h:
            raise ConfigError(f"soft_{name} ({s}) must be below hard_{name} ({h})", key=f"{key}.soft_{name}")
        soft[attr], hard[attr] = s, h
    return Lifetimes(Lifetime(**soft), Lifetime(**hard))


def _limit(value: Any, key: str, name: str) -> int | float | None:
    if value is None:
        return None
    if name in ("bytes", "packets"):
        return _integer(value, key, 1, 2**64 - 1)
    return _seconds(value, key, positive=True)


# -- [defaults] -----------------------------------------------------------------------------

_PROBE = {"spi": 0x100, "src": "192.0.2.1", "dst": "192.0.2.2", "proposal": "aes128gcm16", "enc_key": "00" * 20}


def _defaults(t: dict[str, Any], allow: bool, env: Mapping[str, str]) -> dict[str, Any]:
    """[defaults]: values every [[sa]] inherits. Each must be valid by itself; conflicts with
    an SA's own keys are reported on that SA."""
    for name in t:
        if name in _NO_DEFAULT:
            raise ConfigError(f"{name} picks out one SA and cannot be a default", key=f"defaults.{name}")
    unknown_keys(t, _SA_KEYS | _SA_EXTRA, "defaults")
    _sa_extras(t, "defaults")
    allow = allow or t.get("allow_insecure") is True
    for name, value in t.items():
        key = f"defaults.{name}"
        if name in ("enc_key", "auth_key"):
            _bytes(value, key, env)          # its length depends on the proposal: checked per SA
        elif name in _SA_KEYS:
            # try the value in an otherwise valid SA and keep only errors about this key
            probe = {**_PROBE, name: value}
            if name in ("src", "dst"):
                probe["src"] = probe["dst"] = value
            try:
                sa_from_mapping(probe, key="defaults", allow_insecure=allow, env=env)
            except ConfigError as exc:
                if exc.key == key or (exc.key or "").startswith(key + "."):
                    raise
    return t


# -- [[sa]] ---------------------------------------------------------------------------------

def _sa_extras(t: Mapping[str, Any], key: str) -> tuple[int, str | None, str, Lifetimes]:
    """The keys a configuration-file SA has beyond the ``ipsp trace`` schema."""
    reqid = _integer(t.get("reqid", 0), f"{key}.reqid", 0, _UINT32)
    label = text(t["label"], f"{key}.label") if "label" in t else None
    replay = _choice(t.get("replay", "shared"), _REPLAY, f"{key}.replay")
    lifetimes = _lifetimes(_table(t.get("lifetime", {}), f"{key}.lifetime"), f"{key}.lifetime")
    return reqid, label, replay, lifetimes


def _sa(entry: dict[str, Any], key: str, defaults: Mapping[str, Any], allow: bool,
        env: Mapping[str, str]) -> list[tuple[str, ManualSA]]:
    """One [[sa]] entry with [defaults] merged in. An error a default value caused names the
    entry and says so."""
    own_life = _table(entry.get("lifetime", {}), f"{key}.lifetime")
    default_life = defaults.get("lifetime", {})
    merged = {**defaults, **entry, "lifetime": {**default_life, **own_life}}
    inherited = sorted({k for k in defaults if k not in entry and k != "lifetime"}
                       | {f"lifetime.{k}" for k in default_life if k not in own_life})
    try:
        return _sa_merged(merged, entry, key, allow, env)
    except ConfigError as exc:
        rel = (exc.key or "")[len(key) + 1:]
        if any(rel == k or rel.startswith(k + ".") for k in inherited):
            raise ConfigError(f"{exc.message} (the value came from [defaults])", key=exc.key) from None
        if inherited:
            raise ConfigError(f"{exc.message} (this entry inherits {', '.join(inherited)} from [defaults])",
                              key=exc.key) from None
        raise


def _sa_merged(merged: dict[str, Any], entry: Mapping[str, Any], key: str, allow: bool,
               env: Mapping[str, str]) -> list[tuple[str, ManualSA]]:
    """One ManualSA, or one per sender for an RFC 5374 group SA with per-sender replay;
    as (key path, SA) pairs so duplicates can be named."""
    if "direction" not in merged:
        raise ConfigError("missing required key 'direction' ('in' or 'out')", key=key)
    direction = _choice(merged["direction"], ("in", "out"), f"{key}.direction")
    reqid, label, replay, lifetimes = _sa_extras(merged, key)
    fields = {k: v for k, v in merged.items() if k not in _SA_EXTRA}
    for name in ("enc_key", "auth_key"):       # resolved once, here
        if name in fields:
            fields[name] = "0x" + _bytes(fields[name], f"{key}.{name}", env).hex()
    if replay == "off":
        if merged.get("esn") is True:
            raise ConfigError("replay = 'off' leaves no replay window, which esn needs (RFC 4303 Appendix A)",
                              key=f"{key}.replay")
        if entry.get("replay_window", 0) != 0:
            raise ConfigError("replay = 'off' contradicts replay_window", key=f"{key}.replay_window")
        fields["replay_window"] = 0
    config = sa_from_mapping(fields, key=key, allow_insecure=allow, env=env)

    # RFC 5374 group SAs: senders share one SA to a multicast destination; a receiver keeps
    # one replay window for them all (shared), one per sender (per-sender), or none (off)
    group = [k for k in ("replay", "senders", "source") if k in merged]
    if group and direction != "in":
        raise ConfigError(f"{group[0]} is for inbound multicast group SAs (RFC 5374), not outbound ones",
                          key=f"{key}.{group[0]}")
    if group and not config.dst.is_multicast:
        raise ConfigError(f"{group[0]} is for multicast group SAs (RFC 5374); dst {config.dst} is unicast",
                          key=f"{key}.{group[0]}")
    one = dict(config=config, direction=direction, reqid=reqid, lifetimes=lifetimes, label=label)
    if replay == "per-sender":
        if "source" in merged:
            raise ConfigError("source is for a shared group SA; per-sender replay takes senders", key=f"{key}.source")
        senders = _list(merged.get("senders", []), f"{key}.senders")
        if not senders:
            raise ConfigError("replay = 'per-sender' needs a non-empty senders list", key=f"{key}.senders")
        where = [f"{key}.senders[{j}]" for j in range(len(senders))]
        return [(w, ManualSA(**one, group_source=_sender(s, w, config))) for w, s in zip(where, senders)]
    if "senders" in merged:
        raise ConfigError("senders needs replay = 'per-sender'", key=f"{key}.senders")
    source = _sender(merged["source"], f"{key}.source", config) if "source" in merged else None
    return [(key, ManualSA(**one, group_source=source))]


def _sender(value: Any, key: str, config: SAConfig) -> IPv4Address | IPv6Address:
    if not isinstance(value, str):
        raise ConfigError("expected a sender's address", key=key, got=value)
    addr = _address(value, key)
    if addr.version != config.dst.version or addr.is_multicast:
        raise ConfigError(f"a sender must be a unicast IPv{config.dst.version} address, got {addr}", key=key)
    return addr


# -- [[peer]] (the PAD, RFC 4301 4.4.3) -----------------------------------------------------

def _peer(t: dict[str, Any], key: str, env: Mapping[str, str]) -> Peer:
    unknown_keys(t, _PEER, key)
    for required in ("name", "id", "auth"):
        if required not in t:
            raise ConfigError(f"missing required key {required!r}", key=key)
    name = text(t["name"], f"{key}.name")
    ids = t["id"] if isinstance(t["id"], list) else [t["id"]]
    if not ids:
        raise ConfigError("a peer needs at least one identity", key=f"{key}.id")
    identities = []
    for j, ident in enumerate(ids):
        where = f"{key}.id[{j}]" if isinstance(t["id"], list) else f"{key}.id"
        try:
            identities.append(Identity.parse(text(ident, where)))
        except ConfigError as exc:
            raise ConfigError(exc.message, key=where) from None
    auth = _choice(t["auth"], ("psk", "pubkey"), f"{key}.auth")
    for secret, wanted in (("psk", "psk"), ("ca", "pubkey")):
        if secret in t and auth != wanted:
            raise ConfigError(f"{secret} is only used with auth = {wanted!r}", key=f"{key}.{secret}")
    psk = _bytes(t["psk"], f"{key}.psk", env) if "psk" in t else None
    ca = file_path(t["ca"], f"{key}.ca") if "ca" in t else None
    nets = {}
    for name_ in ("addresses", "allowed"):      # where it may come from; what it may claim (RFC 4301 4.4.3)
        items = _list(t.get(name_, []), f"{key}.{name_}")
        nets[name_] = tuple(_prefix(v, f"{key}.{name_}[{j}]") for j, v in enumerate(items))
    try:
        return Peer(name, tuple(identities), auth, psk=psk, ca=ca, **nets)
    except ConfigError as exc:     # with name, identities and auth checked, what is left is psk or ca
        raise ConfigError(exc.message, key=f"{key}.psk" if auth == "psk" else f"{key}.ca") from None


def _unique_peers(peers: list[Peer]) -> None:
    names: dict[str, int] = {}
    owners: dict[Identity, int] = {}
    for i, p in enumerate(peers):
        if p.name in names:
            raise ConfigError(f"peer name {shown(p.name)} is already used by peer[{names[p.name]}]", key=f"peer[{i}].name")
        names[p.name] = i
        for ident in p.identities:     # an identity must map to one PAD entry (RFC 4301 4.4.3.1)
            if ident in owners:
                raise ConfigError(f"identity {ident} already belongs to peer[{owners[ident]}]", key=f"peer[{i}].id")
            owners[ident] = i


# -- [[policy]] (the SPD, RFC 4301 4.4.1) ---------------------------------------------------

def _policy(t: dict[str, Any], key: str) -> Policy:
    unknown_keys(t, _POLICY, key)
    direction = _choice(t.get("direction", "out"), _DIRECTIONS, f"{key}.direction")
    if "action" not in t:
        raise ConfigError("missing required key 'action' (protect, bypass or discard)", key=key)
    action = _choice(t["action"], _ACTIONS, f"{key}.action")
    src = _prefix(t["src"], f"{key}.src") if "src" in t else None
    dst = _prefix(t["dst"], f"{key}.dst") if "dst" in t else None
    if src is not None and dst is not None and src.version != dst.version:
        raise ConfigError(f"dst {dst} is IPv{dst.version} but src {src} is IPv{src.version}", key=f"{key}.dst")
    family = (src or dst).version if (src or dst) else 4
    src, dst = src or _ANY[family], dst or _ANY[family]     # a missing side is "any" of the other's family
    proto = _proto(t.get("proto", "any"), f"{key}.proto")
    if proto in _ICMP and _ICMP[proto] != src.version:
        raise ConfigError(f"protocol {proto} is ICMP for IPv{_ICMP[proto]}, the selector is IPv{src.version}",
                          key=f"{key}.proto")
    ports: dict[str, tuple[int, int]] = {}
    for name in ("sport", "dport"):
        if name in t:
            if proto not in _PORTED:
                raise ConfigError(f"{name} needs proto tcp, udp or sctp (for ICMP: icmp_type, icmp_code)",
                                  key=f"{key}.{name}")
            ports[name] = _ports(t[name], f"{key}.{name}")
    # RFC 4301 4.4.1.3: ICMP type and code travel in the port selectors (sport: type, dport: code)
    for name, slot in (("icmp_type", "sport"), ("icmp_code", "dport")):
        if name in t:
            if proto not in _ICMP:
                raise ConfigError(f"{name} needs proto icmp or ipv6-icmp", key=f"{key}.{name}")
            value = _integer(t[name], f"{key}.{name}", 0, 255)
            ports[slot] = (value, value)
    priority = _integer(t.get("priority", 1000), f"{key}.priority", -(2**31), 2**31 - 1)
    if action is Action.PROTECT:
        if "reqid" not in t:
            raise ConfigError("a protect policy needs reqid: the SAs that carry it", key=key)
        reqid = _integer(t["reqid"], f"{key}.reqid", 1, _UINT32)
    elif "reqid" in t:
        raise ConfigError(f"reqid is only for protect policies (this one is {t['action']})", key=f"{key}.reqid")
    else:
        reqid = 0
    label = text(t["label"], f"{key}.label") if "label" in t else None
    try:
        selector = PolicySelector(src, dst, proto, **ports)
    except ConfigError as exc:        # checked above; kept so no error goes out without a key
        raise ConfigError(exc.message, key=key) from None
    return Policy(selector, action, direction, priority, label, reqid)


def _proto(value: Any, key: str) -> int:
    if isinstance(value, str) and value.lower() in _PROTOS:
        return _PROTOS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool):
        return _integer(value, key, 0, 255)
    raise ConfigError(f"protocol must be a number 0..255 or one of {', '.join(_PROTOS)}", key=key, got=value)


def _ports(value: Any, key: str) -> tuple[int, int]:
    if isinstance(value, str):
        lo, sep, hi = value.partition("-")
        try:
            rng = (int(lo), int(hi if sep else lo))
        except ValueError:
            raise ConfigError("expected a port or a range like '1024-65535'", key=key, got=value) from None
    else:
        port = _integer(value, key, 0, 65535)
        rng = (port, port)
    if not 0 <= rng[0] <= rng[1] <= 65535:
        raise ConfigError(f"port range {rng[0]}-{rng[1]} must lie within 0..65535, low end first", key=key)
    return rng
