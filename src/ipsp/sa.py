"""Security association parameters: validated, immutable, and turned into kernel state.

:class:`SAConfig` is what a configuration file's ``[[sa]]`` entry, the key manager or a
manual call describes; :meth:`SAConfig.make_state` builds the kernel's
:class:`fastpath.SAState` from it. The SPI is the only coupling between key management and
the engine (the 1993 working group's SAID): everything else an SA implies lives here.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import fastpath
from fastpath import Backend

from ipsp.errors import ConfigError
from ipsp.transforms import Transform, parse_proposal

__all__ = ["SAConfig", "Selector", "sa_from_mapping"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_BACKENDS = {"auto": Backend.BACKEND_AUTO, "openssl": Backend.BACKEND_OPENSSL,
             "ipsecmb": Backend.BACKEND_IPSECMB}
_DF = {"copy": fastpath.DF_COPY_INNER, "set": fastpath.DF_ALWAYS, "clear": fastpath.DF_NEVER}
# IPv4 packets with DF clear that do not fit the path MTU once encapsulated: "outer" sends
# them whole and the outer IP layer fragments the ESP packet; "inner" fragments the inner
# packet first (RFC 791 3.2) and encapsulates each fragment, so no outer fragments reach
# the peer (RFC 4459 section 3 weighs the two)
_FRAGMENT = ("outer", "inner")


@dataclass(frozen=True)
class Selector:
    """Which inner packets an SA carries: source and destination prefixes (RFC 4301 4.4.1)."""

    src: IPNetwork = ipaddress.ip_network("0.0.0.0/0")
    dst: IPNetwork = ipaddress.ip_network("0.0.0.0/0")

    def matches(self, src: IPAddress, dst: IPAddress) -> bool:
        return (src.version == self.src.version and src in self.src
                and dst.version == self.dst.version and dst in self.dst)


@dataclass(frozen=True)
class SAConfig:
    """One ESP SA. Keys are bytes; ``repr`` never shows them."""

    spi: int
    src: IPAddress
    dst: IPAddress
    transform: Transform
    enc_key: bytes = field(repr=False, default=b"")
    auth_key: bytes = field(repr=False, default=b"")
    mode: str = "tunnel"
    udp: bool = False
    sport: int = 4500
    dport: int = 4500
    esn: bool = False
    replay_window: int = 1024
    implicit_iv: bool = False
    tfc_pad: int = 0
    df: str = "copy"
    dscp: int | None = None
    ttl: int = 64
    backend: str = "auto"
    match: Selector | None = None
    allow_insecure: bool = False
    fragment: str = "outer"      # a forwarder's choice for IPv4 DF clear above the path MTU
    # decrypt only, the ICV stripped by its length and never checked, so the integrity key
    # may be absent: `ipsp trace decrypt --no-verify`, as tcpdump -E and Wireshark allow
    icv_unchecked: bool = False

    def __post_init__(self) -> None:
        t = self.transform
        if not 256 <= self.spi <= 0xFFFFFFFF:
            raise ConfigError(f"spi {self.spi:#x} is outside 0x100..0xffffffff (0-255 are reserved, RFC 4303 2.1)",
                              key="spi")
        if self.src.version != self.dst.version:
            raise ConfigError(f"src {self.src} and dst {self.dst} are of different IP versions", key="src")
        if self.mode not in ("tunnel", "transport"):
            raise ConfigError(f"mode must be 'tunnel' or 'transport', got {self.mode!r}", key="mode")
        if t.legacy and not self.allow_insecure:
            raise ConfigError(f"proposal {t.name!r} is insecure (RFC 8221: MUST NOT) and is refused unless "
                              "insecure transforms are explicitly allowed (allow_insecure = true)", key="proposal")
        if len(self.enc_key) != t.enc_key_len:
            extra = f" (key + {t.salt_len}-byte salt)" if t.salt_len else ""
            raise ConfigError(f"{t.name} needs a {t.enc_key_len}-byte enc_key{extra}, got {len(self.enc_key)} bytes",
                              key="enc_key")
        if len(self.auth_key) != t.auth_key_len and not (self.icv_unchecked and not self.auth_key):
            what = "takes no auth_key (AEAD)" if t.aead else f"needs a {t.auth_key_len}-byte auth_key"
            raise ConfigError(f"{t.name} {what}, got {len(self.auth_key)} bytes", key="auth_key")
        if self.backend not in _BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(_BACKENDS)}, got {self.backend!r}", key="backend")
        if self.df not in _DF:
            raise ConfigError(f"df must be one of {', '.join(_DF)}, got {self.df!r}", key="df")
        if self.implicit_iv and (not t.aead or t.cipher == fastpath.Cipher.CIPHER_AES_GMAC):
            raise ConfigError("implicit_iv (RFC 8750) needs an AES-GCM or ChaCha20-Poly1305 proposal",
                              key="implicit_iv")
        if self.esn and self.replay_window == 0:
            raise ConfigError("esn needs a replay window (RFC 4303 Appendix A)", key="replay_window")
        if self.replay_window and not 32 <= self.replay_window <= 1 << 20:
            raise ConfigError(f"replay_window must be 0 (off) or 32..1048576, got {self.replay_window}",
                              key="replay_window")
        for name in ("sport", "dport"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be 1..65535", key=name)
        if self.tfc_pad and self.mode != "tunnel":
            raise ConfigError("tfc_pad needs tunnel mode (RFC 4303 2.7)", key="tfc_pad")
        if not 0 <= self.tfc_pad <= 65535:
            raise ConfigError("tfc_pad must be 0..65535", key="tfc_pad")
        if self.dscp is not None and not 0 <= self.dscp <= 63:
            raise ConfigError("dscp must be 0..63", key="dscp")
        if not 1 <= self.ttl <= 255:
            raise ConfigError("ttl must be 1..255", key="ttl")
        if self.fragment not in _FRAGMENT:
            raise ConfigError(f"fragment must be one of {', '.join(_FRAGMENT)}, got {self.fragment!r}", key="fragment")
        if self.fragment == "inner" and self.mode != "tunnel":
            raise ConfigError("fragment = 'inner' needs tunnel mode (a transport SA carries no fragments, RFC 4301 7)",
                              key="fragment")

    def make_state(self) -> fastpath.SAState:
        """Build the kernel state for this SA (a new one each call: each owns its counters)."""
        t = self.transform
        try:
            return fastpath.SAState(
                spi=self.spi, cipher=t.cipher, integ=t.integ, icv_len=t.icv_len,
                enc_key=self.enc_key, auth_key=self.auth_key,
                mode=fastpath.TUNNEL if self.mode == "tunnel" else fastpath.TRANSPORT,
                src=self.src.packed, dst=self.dst.packed, udp=self.udp, sport=self.sport,
                dport=self.dport, esn=self.esn, replay_window=self.replay_window,
                tfc_pad=self.tfc_pad, implicit_iv=self.implicit_iv, backend=_BACKENDS[self.backend],
                df=_DF[self.df], dscp=self.dscp, ttl=self.ttl)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"expected an integer, got {value!r}", key=key)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise ConfigError(f"expected an integer or a '0x...' string, got {value!r}", key=key)


def _bytes(value: Any, key: str, env: Mapping[str, str]) -> bytes:
    """Key material: "0x..." hex inline, or {file = "..."} / {env = "..."} so secrets need
    not sit in the configuration file."""
    if isinstance(value, dict):
        if set(value) == {"file"}:
            name = value["file"]
            # a path, never a file descriptor: open(1) would read (and close) stdout
            if not isinstance(name, str) or not name or "\0" in name:
                raise ConfigError(f"'file' must be a path, got {name!r}", key=key)
            try:
                with open(name, encoding="ascii") as f:
                    value = f.read().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read key file {name!r}: {exc.strerror}", key=key) from None
            except UnicodeDecodeError:
                raise ConfigError(f"key file {name!r} must hold hex text, not binary", key=key) from None
        elif set(value) == {"env"}:
            if not isinstance(value["env"], str) or value["env"] not in env:
                raise ConfigError(f"environment variable {value['env']!r} is not set", key=key)
            value = env[value["env"]].strip()
        else:
            raise ConfigError("a key table takes exactly one of 'file' or 'env'", key=key)
    if not isinstance(value, str):
        raise ConfigError(f"expected a hex string like '0x0123...', got {type(value).__name__}", key=key)
    text = value[2:] if value.lower().startswith("0x") else value
    try:
        return bytes.fromhex(text.replace(":", "").replace(" ", ""))
    except ValueError:
        raise ConfigError("not a valid hex string", key=key) from None


def _address(value: Any, key: str) -> IPAddress:
    if not isinstance(value, str):           # ip_address(1) would be 0.0.0.1
        raise ConfigError(f"expected an address string, got {value!r}", key=key)
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not an IPv4 or IPv6 address", key=key) from None


def _network(value: Any, key: str) -> IPNetwork:
    if not isinstance(value, str):
        raise ConfigError(f"expected a prefix string, got {value!r}", key=key)
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(f"{value!r} is not an IP prefix", key=key) from None


# the file says encap = "udp"; SAConfig's own field name is not a key
_KNOWN = {f.name for f in fields(SAConfig)} - {"transform", "udp", "icv_unchecked"} | {"proposal", "encap"}


def sa_from_mapping(entry: Mapping[str, Any], *, key: str = "sa", allow_insecure: bool = False,
                    env: Mapping[str, str] | None = None, icv_unchecked: bool = False) -> SAConfig:
    """An SAConfig from one ``[[sa]]`` table (the schema of ``ipsp trace`` and the config file).
    Every error names the key path (``key`` prefixes it). ``icv_unchecked``: see SAConfig."""
    env = os.environ if env is None else env
    if not isinstance(entry, Mapping):
        raise ConfigError("an SA entry must be a table", key=key)
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}", key=key)
    for required in ("spi", "src", "dst", "proposal", "enc_key"):
        if required not in entry and not (required == "enc_key" and "null" in str(entry.get("proposal", ""))):
            raise ConfigError(f"missing required key {required!r}", key=key)
    kw: dict[str, Any] = {}
    try:
        kw["transform"] = parse_proposal(str(entry["proposal"]))
    except ConfigError as exc:
        raise ConfigError(str(exc), key=f"{key}.proposal") from None
    kw["spi"] = _int(entry["spi"], f"{key}.spi")
    kw["src"] = _address(entry["src"], f"{key}.src")
    kw["dst"] = _address(entry["dst"], f"{key}.dst")
    kw["enc_key"] = _bytes(entry.get("enc_key", ""), f"{key}.enc_key", env)
    if "auth_key" in entry:
        kw["auth_key"] = _bytes(entry["auth_key"], f"{key}.auth_key", env)
    encap = entry.get("encap")
    if encap not in (None, "udp", "none"):
        raise ConfigError(f"encap must be 'udp' or absent, got {encap!r}", key=f"{key}.encap")
    kw["udp"] = encap == "udp"
    for name, kind in (("mode", str), ("esn", bool), ("implicit_iv", bool), ("df", str),
                       ("backend", str), ("allow_insecure", bool), ("fragment", str)):
        if name in entry:
            if not isinstance(entry[name], kind):
                raise ConfigError(f"expected a {kind.__name__}, got {entry[name]!r}", key=f"{key}.{name}")
            kw[name] = entry[name]
    for name in ("sport", "dport", "replay_window", "tfc_pad", "ttl", "dscp"):
        if name in entry:
            kw[name] = _int(entry[name], f"{key}.{name}")
    if "match" in entry:
        m = entry["match"]
        if not isinstance(m, Mapping) or set(m) - {"src", "dst"}:
            raise ConfigError("match takes a table with 'src' and/or 'dst' prefixes", key=f"{key}.match")
        any4, any6 = "0.0.0.0/0", "::/0"
        src = _network(m.get("src", any6 if ":" in str(m.get("dst", "")) else any4), f"{key}.match.src")
        dst = _network(m.get("dst", any6 if src.version == 6 else any4), f"{key}.match.dst")
        kw["match"] = Selector(src, dst)
    kw["allow_insecure"] = kw.get("allow_insecure", False) or allow_insecure
    kw["icv_unchecked"] = icv_unchecked
    try:
        return SAConfig(**kw)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=f"{key}.{exc.key}" if exc.key else key) from None
