"""Security association parameters: validated, immutable, and turned into kernel state.

:class:`SAConfig` is what a configuration file's ``[[sa]]`` entry, the key manager or a
manual call describes; :meth:`SAConfig.make_state` builds the kernel's
:class:`fastpath.SAState` from it. The SPI is the only coupling between key management and
the engine (the 1993 working group's SAID): everything else an SA implies lives here.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import fastpath
from fastpath import Backend

from ipsp.errors import ConfigError, looks_like_key, note_once, shown
from ipsp.files import FileError, read_input
from ipsp.transforms import Transform, parse_esp_proposal

__all__ = ["SAConfig", "Selector", "sa_from_mapping", "KEY_FILE_MAX", "warn_if_exposed"]

# a key file holds one key as hex text (a 64-byte key is 130 characters, with separators
# under 200): 4 KiB leaves room for whitespace, and /dev/zero or a log file named by mistake
# is refused after one read
KEY_FILE_MAX = 4096

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
            spi = f"{self.spi:#x}" if -(2**32) < self.spi < 2**36 else shown(self.spi)
            raise ConfigError(f"spi {spi} is outside 0x100..0xffffffff (0-255 are reserved, RFC 4303 2.1)",
                              key="spi")
        if self.src.version != self.dst.version:
            raise ConfigError(f"src {self.src} and dst {self.dst} are of different IP versions", key="src")
        if self.mode not in ("tunnel", "transport"):
            raise ConfigError("mode must be 'tunnel' or 'transport'", key="mode", got=self.mode)
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
            raise ConfigError(f"backend must be one of {', '.join(_BACKENDS)}", key="backend", got=self.backend)
        if self.df not in _DF:
            raise ConfigError(f"df must be one of {', '.join(_DF)}", key="df", got=self.df)
        if self.implicit_iv and (not t.aead or t.cipher == fastpath.Cipher.CIPHER_AES_GMAC):
            raise ConfigError("implicit_iv (RFC 8750) needs an AES-GCM or ChaCha20-Poly1305 proposal",
                              key="implicit_iv")
        if self.esn and self.replay_window == 0:
            raise ConfigError("esn needs a replay window (RFC 4303 Appendix A)", key="replay_window")
        check_replay_window(self.replay_window, "replay_window")
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
            raise ConfigError(f"fragment must be one of {', '.join(_FRAGMENT)}", key="fragment", got=self.fragment)
        if self.fragment == "inner" and self.mode != "tunnel":
            raise ConfigError("fragment = 'inner' needs tunnel mode (a transport SA carries no fragments, RFC 4301 7)",
                              key="fragment")

    def make_state(self) -> fastpath.SAState:
        """Build the kernel state for this SA (a new one each call: each owns its counters)."""
        t = self.transform
        auth_key = self.auth_key
        if self.icv_unchecked and not auth_key and t.auth_key_len:
            # the kernel keys its HMAC even for an SA that never verifies; this key is never
            # used: the ICV is only stripped by its length (RFC 4303 2.8)
            auth_key = bytes(t.auth_key_len)
        try:
            return fastpath.SAState(
                spi=self.spi, cipher=t.cipher, integ=t.integ, icv_len=t.icv_len,
                enc_key=self.enc_key, auth_key=auth_key,
                mode=fastpath.TUNNEL if self.mode == "tunnel" else fastpath.TRANSPORT,
                src=self.src.packed, dst=self.dst.packed, udp=self.udp, sport=self.sport,
                dport=self.dport, esn=self.esn, replay_window=self.replay_window,
                tfc_pad=self.tfc_pad, implicit_iv=self.implicit_iv, backend=_BACKENDS[self.backend],
                df=_DF[self.df], dscp=self.dscp, ttl=self.ttl)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def check_replay_window(window: int, key: str) -> int:
    """The one rule for a replay window, manual or IKE-keyed: 0 (off) or 32..2**20 packets."""
    if window and not 32 <= window <= 1 << 20:
        raise ConfigError("replay_window must be 0 (off) or 32..1048576", key=key, got=window)
    return window


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError("expected an integer", key=key, got=value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 20:     # 0xffffffffffffffff; int() of 4301 digits raises
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise ConfigError("expected an integer or a '0x...' string", key=key, got=value)


def warn_if_exposed(st: os.stat_result, what: str, key: str | None = None) -> None:
    """Warn (once) when a file that holds secrets is readable by group or others, as OpenSSH
    does for private keys and strongSwan for swanctl.conf's secrets."""
    if st.st_mode & 0o077:
        note_once(f"{what} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it",
                  key=key)


def read_key_file(name: str, key: str) -> str:
    """The hex text of a key file: a regular file of at most KEY_FILE_MAX bytes. Opened without
    blocking so a FIFO named by mistake cannot hang a reload; never echoes what it holds."""
    try:
        data, st = read_input(name, KEY_FILE_MAX)
    except FileError as exc:
        raise ConfigError(f"cannot read key file {shown(name, 256)}: {exc.problem}" if exc.unreadable
                          else f"key file {shown(name, 256)} {exc.problem}: a key file holds one key as hex text",
                          key=key) from None
    warn_if_exposed(st, f"key file {shown(name, 256)}", key)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"key file {shown(name, 256)} must hold hex text, not binary", key=key) from None


def _bytes(value: Any, key: str, env: Mapping[str, str]) -> bytes:
    """Key material: "0x..." hex inline, or {file = "..."} / {env = "..."} so secrets need
    not sit in the configuration file."""
    if isinstance(value, dict):
        if set(value) == {"file"}:
            name = value["file"]
            # a path, never a file descriptor: open(1) would read (and close) stdout
            if not isinstance(name, str) or not name or "\0" in name:
                raise ConfigError("'file' must be a path", key=key, got=name)
            if looks_like_key(name):
                raise ConfigError("the value of 'file' looks like a key, not a path: write the key itself "
                                  "(\"0x...\") or the path of a file that holds it", key=key)
            value = read_key_file(name, key)
        elif set(value) == {"env"}:
            name = value["env"]
            if not isinstance(name, str) or not name or "\0" in name or "=" in name:
                raise ConfigError("'env' must name an environment variable", key=key, got=name)
            if looks_like_key(name):
                raise ConfigError("the value of 'env' looks like a key, not a variable's name: write the key "
                                  "itself (\"0x...\") or the name of a variable that holds it", key=key)
            if name not in env:
                raise ConfigError(f"environment variable {shown(name)} is not set", key=key)
            value = env[name].strip()
        else:
            raise ConfigError("a key table takes exactly one of 'file' or 'env'", key=key)
    if not isinstance(value, str):
        raise ConfigError("expected a hex string like '0x0123...'", key=key, got=type(value).__name__)
    text = value[2:] if value.lower().startswith("0x") else value
    try:
        return bytes.fromhex(text.replace(":", "").replace(" ", ""))
    except ValueError:
        raise ConfigError("not a valid hex string", key=key) from None


def text(value: Any, key: str) -> str:
    """A non-empty string that encodes as UTF-8: a lone surrogate (possible from JSON on the
    control socket or a Python caller, never from TOML) would fail later, when a name is
    printed, logged or put into an IKE payload."""
    if not isinstance(value, str) or not value:
        raise ConfigError("expected a non-empty string", key=key, got=value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError("not valid Unicode text (it holds a lone surrogate)", key=key) from None
    return value


def file_path(value: Any, key: str) -> str:
    """A path the OS can take: no NUL, and encodable to the file system's bytes (open() would
    raise ValueError or UnicodeEncodeError when a daemon starts, not when the file is checked)."""
    path = text(value, key)
    if "\0" in path:
        raise ConfigError("a path cannot hold a NUL character", key=key)
    try:
        os.fsencode(path)
    except UnicodeError:
        raise ConfigError("a path the file system cannot encode", key=key, got=path) from None
    return path


def _address(value: Any, key: str) -> IPAddress:
    if not isinstance(value, str):           # ip_address(1) would be 0.0.0.1
        raise ConfigError("expected an address string", key=key, got=value)
    # no IPv6 zone (fe80::1%eth0): an SA or selector compares the packed address, which has none
    if "%" not in value:
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            pass
    raise ConfigError(f"{shown(value)} is not an IPv4 or IPv6 address", key=key)


def _network(value: Any, key: str) -> IPNetwork:
    if not isinstance(value, str):
        raise ConfigError("expected a prefix string", key=key, got=value)
    if "%" not in value:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
    raise ConfigError(f"{shown(value)} is not an IP prefix", key=key)


def unknown_keys(table: Mapping[str, Any], known: set[str], key: str | None, what: str = "") -> None:
    """Refuse keys a table does not know. The names are shown (a typo is what the reader must
    see) unless one could be key material: a key name is the user's text too."""
    unknown = sorted(map(str, set(table) - known))
    if unknown:
        raise ConfigError(f"unknown {what}key(s) {', '.join(shown(k, 64).strip(chr(39)) for k in unknown[:10])}"
                          f"{' and more' if len(unknown) > 10 else ''}", key=key)


# the file says encap = "udp"; SAConfig's own field name is not a key
_KNOWN = {f.name for f in fields(SAConfig)} - {"transform", "udp", "icv_unchecked"} | {"proposal", "encap"}


def sa_from_mapping(entry: Mapping[str, Any], *, key: str = "sa", allow_insecure: bool = False,
                    env: Mapping[str, str] | None = None, icv_unchecked: bool = False) -> SAConfig:
    """An SAConfig from one ``[[sa]]`` table (the schema of ``ipsp trace`` and the config file).
    Every error names the key path (``key`` prefixes it). ``icv_unchecked``: see SAConfig."""
    env = os.environ if env is None else env
    if not isinstance(entry, Mapping):
        raise ConfigError("an SA entry must be a table", key=key)
    unknown_keys(entry, _KNOWN, key)
    for required in ("spi", "src", "dst", "proposal"):
        if required not in entry:
            raise ConfigError(f"missing required key {required!r}", key=key)
    kw: dict[str, Any] = {}
    if not isinstance(entry["proposal"], str):
        raise ConfigError("expected an ESP proposal such as 'aes128gcm16'", key=f"{key}.proposal",
                          got=entry["proposal"])
    try:
        kw["transform"], groups = parse_esp_proposal(entry["proposal"])
    except ConfigError as exc:
        raise ConfigError(exc.message, key=f"{key}.proposal") from None
    if groups:
        # strongSwan's ESP proposal syntax: the group is PFS for an IKE rekey; a manually
        # keyed SA has no key exchange at all
        note_once(f"the Diffie-Hellman group after {kw['transform'].name} is ignored: a manually keyed SA has "
                  "no key exchange (the group means PFS for IKE-keyed Child SAs)", key=f"{key}.proposal")
    if "enc_key" not in entry and kw["transform"].enc_key_len:       # ENCR_NULL has no key
        raise ConfigError("missing required key 'enc_key'", key=key)
    kw["spi"] = _int(entry["spi"], f"{key}.spi")
    kw["src"] = _address(entry["src"], f"{key}.src")
    kw["dst"] = _address(entry["dst"], f"{key}.dst")
    kw["enc_key"] = _bytes(entry.get("enc_key", ""), f"{key}.enc_key", env)
    if "auth_key" in entry:
        kw["auth_key"] = _bytes(entry["auth_key"], f"{key}.auth_key", env)
    encap = entry.get("encap")
    if encap not in (None, "udp", "none"):
        raise ConfigError("encap must be 'udp' or absent", key=f"{key}.encap", got=encap)
    kw["udp"] = encap == "udp"
    for name, kind in (("mode", str), ("esn", bool), ("implicit_iv", bool), ("df", str),
                       ("backend", str), ("allow_insecure", bool), ("fragment", str)):
        if name in entry:
            if not isinstance(entry[name], kind):
                raise ConfigError(f"expected a {kind.__name__}", key=f"{key}.{name}", got=entry[name])
            kw[name] = entry[name]
    for name in ("sport", "dport", "replay_window", "tfc_pad", "ttl", "dscp"):
        if name in entry:
            kw[name] = _int(entry[name], f"{key}.{name}")
    if "match" in entry:
        m = entry["match"]
        if not isinstance(m, Mapping) or set(m) - {"src", "dst"}:
            raise ConfigError("match takes a table with 'src' and/or 'dst' prefixes", key=f"{key}.match")
        any4, any6 = "0.0.0.0/0", "::/0"
        dst_text = m.get("dst", "")
        src = _network(m.get("src", any6 if isinstance(dst_text, str) and ":" in dst_text else any4),
                       f"{key}.match.src")
        dst = _network(m.get("dst", any6 if src.version == 6 else any4), f"{key}.match.dst")
        kw["match"] = Selector(src, dst)
    kw["allow_insecure"] = kw.get("allow_insecure", False) or allow_insecure
    kw["icv_unchecked"] = icv_unchecked
    try:
        config = SAConfig(**kw)
        # what the kernel refuses (a transform its backend lacks) must fail here, where
        # `ipsp config check` sees it, not when a daemon installs the SA
        config.make_state().close()
    except ConfigError as exc:
        raise ConfigError(exc.message, key=f"{key}.{exc.key}" if exc.key else key) from None
    return config
