"""strongSwan charon as a real IKEv2 peer, in network namespaces (a harness, no tests).

How charon runs here is described in /work/shared/anchors/strongswan.md: the kernel has no
XFRM ESP, so charon uses kernel-libipsec (userspace ESP through a TUN ``ipsec0``, all ESP
UDP-encapsulated on 4500); 5.9.8 hard-codes /var/run/charon.pid, so each charon runs as
``ip netns exec NS sh -c 'mount --bind STATE/run /run && exec env STRONGSWAN_CONF=... charon'``
(the mount namespace of ``ip netns exec`` is private to that process).

The suite runs with --import-mode=importlib: a test module loads this file by path (see
test_strongswan_harness.py, which registers it as ``sys.modules["strongswan"]``).

Pieces:

- :func:`available` - None, or why the tests must skip.
- :class:`Netns` - ``ipspike-<pid>-<role>``; namespaces of dead pytest processes are deleted
  at first use. :func:`link` (a veth pair), :func:`add_lo_address` (inside /32 on lo).
- :class:`Charon` - one charon with its own state directory::

      STATE/strongswan.conf   STATE/charon.log (the filelog)   STATE/charon.out (stdout/stderr)
      STATE/charon.vici       STATE/run/ (bind-mounted on /run: charon.pid)
      STATE/swanctl/swanctl.conf and the ``files`` (x509/, x509ca/, private/, x509crl/, ...)

  Credentials: swanctl 5.9.8 given ``--file STATE/swanctl/swanctl.conf`` loads the credential
  directories (x509/, x509ca/, x509crl/, private/, ecdsa/, rsa/, pkcs8/, ...) relative to that
  file's directory - checked: it does so even with SWANCTL_DIR pointing elsewhere; without
  --file it uses $SWANCTL_DIR, else the compiled-in /etc/swanctl. :meth:`Charon.swanctl` also
  sets SWANCTL_DIR=STATE/swanctl so that ``--load-creds`` without --file finds the same tree.
  test_strongswan_harness.py's certificate test asserts the paths swanctl reports.
- :meth:`Charon.keys` - the key material charon logs at ike/chd level 4.
- :func:`capture_ike` - the IKE messages crossing an interface (AF_PACKET in the namespace).
- :func:`stop_all` / :func:`cleanup` - stop every charon and delete every namespace this
  process created (use in fixture teardowns; also registered with atexit).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = shutil.which("swanctl") or "/usr/sbin/swanctl"
PREFIX = "ipspike-"

PLUGINS = ("random nonce openssl aes sha1 sha2 md5 gcm chapoly hmac cmac xcbc ctr ccm pem pkcs1 pkcs8 "
           "x509 pubkey gmp curve25519 kdf revocation constraints kernel-libipsec kernel-netlink "
           "socket-default vici")

# every charon and namespace this process started (stop_all / cleanup)
_CHARONS: list["Charon"] = []
_NAMESPACES: list["Netns"] = []
_stale_done = False


def _nslib():
    # tests/conftest.py registers it; the benchmarks load this harness without that conftest
    if "nslib" not in sys.modules:
        spec = importlib.util.spec_from_file_location("nslib", Path(__file__).parents[1] / "nslib.py")
        sys.modules["nslib"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["nslib"])
    return sys.modules["nslib"]


sh, until, delete_namespace = _nslib().sh, _nslib().until, _nslib().delete_namespace


def delete_stale(tmp: str = "/tmp") -> list[str]:
    """Namespaces (ipspike-<pid>-...) and /tmp/ipspike-<pid>-* directories of earlier runs whose
    process is gone."""
    return _nslib().delete_stale(PREFIX, tmp)


def available() -> str | None:
    """None when charon can run here as these tests need, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, TUN, bind mounts)"
    for tool, what in ((CHARON, "strongswan-charon"), (SWANCTL, "strongswan-swanctl")):
        if not os.access(tool, os.X_OK):
            return f"needs {tool} ({what})"
    for plugin in ("kernel-libipsec", "vici", "curve25519"):
        if not Path(f"/usr/lib/ipsec/plugins/libstrongswan-{plugin}.so").exists():
            return f"needs the strongSwan {plugin} plugin (libcharon-extra-plugins, libstrongswan-extra-plugins)"
    return _nslib().unavailable(PREFIX)


# -- namespaces -------------------------------------------------------------------------------

def state_root() -> Path:
    """A fresh directory /tmp/ipspike-<pid>-XXXX for charon state dirs (short: the vici socket
    path must fit in 108 bytes; not under /run, which each charon bind-mounts over). The caller
    removes it (shutil.rmtree); stale ones of dead pids go with delete_stale()."""
    import tempfile
    return Path(tempfile.mkdtemp(dir="/tmp", prefix=f"{PREFIX}{os.getpid()}-"))


class Netns:
    """A network namespace named f"ipspike-{os.getpid()}-{role}"; stale ones from dead pids are
    deleted at first use. IPv6 is disabled inside (no router solicitations on the links)."""

    def __init__(self, role: str):
        global _stale_done
        if not _stale_done:
            delete_stale()
            _stale_done = True
        self.role = role
        self.name = f"{PREFIX}{os.getpid()}-{role}"
        if any(ns.name == self.name for ns in _NAMESPACES):
            raise ValueError(f"namespace {self.name} is in use (another Netns({role!r}) of this process): "
                             "delete() it first or pick another role")
        if self.name in sh("ip", "netns", "list", check=False).stdout.split():
            delete_namespace(self.name)       # left over by this process (a Netns not deleted)
        sh("ip", "netns", "add", self.name)
        _NAMESPACES.append(self)
        self.run("sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                             "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")
        self.ip("link", "set", "lo", "up")

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def run(self, *cmd, check: bool = True, timeout: float = 30, input=None) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout, input=input)

    def ip(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.name, *args, check=check)

    def popen(self, *cmd, **kw) -> subprocess.Popen:
        """``ip netns exec NAME cmd`` (ip execs it: the pid is the command's own)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *map(str, cmd)], **kw)

    def ping(self, dst: str, *opts, count: int = 2, check: bool = True) -> subprocess.CompletedProcess:
        """ping -n -c COUNT -W 2 -i 0.05 [opts] dst; asserts success when *check*."""
        r = self.run("ping", "-n", "-c", count, "-W", 2, "-i", "0.05", *opts, dst, check=False, timeout=60)
        if check:
            assert r.returncode == 0, f"ping in {self.name} to {dst} failed:\n{r.stdout}{r.stderr}"
        return r

    def delete(self) -> None:
        delete_namespace(self.name)
        if self in _NAMESPACES:
            _NAMESPACES.remove(self)


def link(a: Netns, a_addr: str, b: Netns, b_addr: str, *, prefix: int = 24, mtu: int = 1500,
         names: tuple[str, str] | None = None) -> tuple[str, str]:
    """A veth pair between two namespaces (named after the peer's role unless *names*), the
    addresses (/prefix), MTU, up; lo is up in both. Returns the two interface names."""
    ia, ib = names or (f"to-{b.role}"[:15], f"to-{a.role}"[:15])
    sh("ip", "link", "add", ia, "netns", a.name, "mtu", mtu, "type", "veth", "peer", "name", ib,
       "netns", b.name, "mtu", mtu)
    for ns, dev, addr in ((a, ia, a_addr), (b, ib, b_addr)):
        ns.ip("addr", "add", f"{addr}/{prefix}", "dev", dev)
        ns.ip("link", "set", dev, "up")
        ns.ip("link", "set", "lo", "up")
    return ia, ib


def add_lo_address(ns: Netns, addr_with_prefix: str) -> None:
    """An inside address on lo (this kernel has no dummy driver); "/32" added when no prefix."""
    if "/" not in addr_with_prefix:
        addr_with_prefix += "/32"
    ns.ip("addr", "add", addr_with_prefix, "dev", "lo")


# -- charon -----------------------------------------------------------------------------------

# a filelog line: "2026-11-27 12:53:20 00[IKE] <gw|1> message" (time_format below, ike_name =
# yes); any prefix before the thread number is accepted (other time formats, none)
_LOG_LINE = re.compile(r"^(?:.*?\s)??(\d+)\[(\w+)\] (?:<([^>]*)> )?(.*)$")
# a hex dump line: "   0: 9B F6 14 2D E0 F2 33 3E 00 00 00 00 00 00 00 00  ...-..3>........"
# (decimal offset, up to 16 bytes, two spaces, ASCII)
_HEX_LINE = re.compile(r"^\s*\d+: ((?:[0-9A-Fa-f]{2} ){0,15}[0-9A-Fa-f]{2})(?:  |$)")


class CharonError(AssertionError):
    pass


class Charon:
    """One charon in a namespace, its own state dir, strongswan.conf, swanctl.conf, filelog
    (ike=4, chd=4, knl=2, cfg=2, net=1, enc=1), vici socket.

    ``extra_conf`` is appended to strongswan.conf at the top level (sections of the same name
    merge, e.g. ``charon { retransmit_tries = 2 }``). ``files`` are written under
    STATE/swanctl/ (``{"x509ca/ca.pem": ..., "x509/gw.pem": ..., "private/gw.key": ...}``)."""

    def __init__(self, ns: Netns, state_dir: Path, *, swanctl_conf: str, extra_conf: str = "",
                 files: dict[str, bytes] | None = None):
        self.ns = ns
        self.dir = Path(state_dir).resolve()
        if str(self.dir).startswith("/run/") or str(self.dir) == "/run":
            raise ValueError(f"state dir {self.dir} must not be under /run (bind-mounted over)")
        self.vici = self.dir / "charon.vici"
        if len(str(self.vici)) > 100:
            raise ValueError(f"state dir {self.dir} too long for a Unix socket path")
        self.uri = f"unix://{self.vici}"
        self.log = self.dir / "charon.log"
        self.out = self.dir / "charon.out"
        self.conf = self.dir / "strongswan.conf"
        self.swanctl_dir = self.dir / "swanctl"
        self.swanctl_conf = self.swanctl_dir / "swanctl.conf"
        self.proc: subprocess.Popen | None = None
        self._out_file = None

        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        # every directory swanctl --load-creds opens (it complains about missing ones)
        for sub in ("x509", "x509ca", "x509crl", "x509ocsp", "x509aa", "x509ac", "private", "ecdsa", "rsa",
                    "pkcs8", "pkcs12", "pubkey", "bliss"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        for rel, data in (files or {}).items():
            p = self.swanctl_dir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data if isinstance(data, bytes) else data.encode())
            if rel.startswith(("private/", "ecdsa/", "rsa/", "pkcs8/")):
                p.chmod(0o600)
        self.swanctl_conf.write_text(swanctl_conf)
        self.conf.write_text(self._strongswan_conf() + "\n" + extra_conf + "\n")

    def __repr__(self) -> str:
        return f"Charon({self.ns.name}, {self.dir})"

    def _strongswan_conf(self) -> str:
        return f"""\
# written by tests/ike/strongswan.py
charon {{
    load = {PLUGINS}
    port = 500
    port_nat_t = 4500
    install_routes = yes
    interfaces_ignore = ipsec0
    filelog {{
        main {{
            path = {self.log}
            time_format = %F %T
            ike_name = yes
            append = no
            flush_line = yes
            default = 1
            ike = 4
            chd = 4
            knl = 2
            cfg = 2
            net = 1
            enc = 1
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
    plugins {{
        vici {{
            socket = {self.uri}
        }}
    }}
}}
"""

    # -- lifecycle
    def start(self, timeout: float = 10) -> None:
        """Start charon (own /run via a bind mount), wait for the vici socket to answer, then
        ``swanctl --load-all``. Raises CharonError with the log tail on failure."""
        if self.proc is not None and self.proc.poll() is None:
            raise CharonError(f"{self} already running")
        self.vici.unlink(missing_ok=True)
        self._out_file = open(self.out, "w")
        script = (f"mount --bind {self.dir / 'run'} /run && "
                  f"exec env STRONGSWAN_CONF={self.conf} {CHARON}")
        self.proc = self.ns.popen("sh", "-c", script, stdout=self._out_file, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        _CHARONS.append(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise CharonError(f"charon in {self.ns.name} exited {self.proc.returncode}\n{self.tail()}")
            if self.vici.exists() and self.swanctl("--stats", check=False, timeout=5).returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise CharonError(f"charon in {self.ns.name}: no vici answer within {timeout:g} s\n{self.tail()}")
            time.sleep(0.02)
        r = self.swanctl("--load-all", "--file", self.swanctl_conf, check=False)
        # a syntax error in swanctl.conf still exits 0 ("invalid config file" on stderr)
        if r.returncode != 0 or "failed" in r.stdout.lower() or re.search(r"invalid|error|failed", r.stderr, re.I):
            raise CharonError(f"swanctl --load-all in {self.ns.name} failed ({r.returncode}):\n"
                              f"{r.stdout}{r.stderr}\n{self.tail()}")
        self.loaded = r.stdout

    def stop(self) -> None:
        """SIGTERM the charon this object started, wait up to 5 s, SIGKILL if needed."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
            finally:
                if self._out_file is not None:
                    self._out_file.close()
                    self._out_file = None
        if self in _CHARONS:
            _CHARONS.remove(self)

    def __enter__(self) -> "Charon":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- swanctl
    def swanctl(self, *args, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """swanctl --uri unix://STATE/charon.vici ARGS (run in the namespace; SWANCTL_DIR set)."""
        env = {**os.environ, "SWANCTL_DIR": str(self.swanctl_dir)}
        cmd = ["ip", "netns", "exec", self.ns.name, SWANCTL, *map(str, args), "--uri", self.uri]
        r = sh(*cmd, check=False, timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise CharonError(f"swanctl {' '.join(map(str, args))} in {self.ns.name} exited {r.returncode}\n"
                              f"{r.stdout}{r.stderr}\n{self.tail()}")
        return r

    def initiate(self, child: str, ike: str | None = None, timeout: float = 20) -> None:
        """swanctl --initiate --child CHILD [--ike IKE]: returns once the CHILD_SA is up."""
        args = ["--initiate", "--child", child, "--timeout", max(1, int(timeout))]
        if ike:
            args += ["--ike", ike]
        self.swanctl(*args, timeout=timeout + 5)

    def terminate(self, ike: str | None = None, child: str | None = None, timeout: float = 10) -> None:
        """swanctl --terminate --ike/--child (waits for the DELETE to be answered)."""
        if not ike and not child:
            raise ValueError("terminate: name an ike or a child")
        args = ["--terminate", "--timeout", max(1, int(timeout))]
        args += ["--ike", ike] if ike else ["--child", child]
        self.swanctl(*args, timeout=timeout + 5)

    def rekey(self, ike: str | None = None, child: str | None = None) -> None:
        """swanctl --rekey --ike/--child (asynchronous: wait for the result with wait_log or
        list_sas)."""
        if not ike and not child:
            raise ValueError("rekey: name an ike or a child")
        self.swanctl("--rekey", *(["--ike", ike] if ike else ["--child", child]))

    def list_sas(self) -> dict:
        """``swanctl --list-sas --raw`` as {ike_name: {...vici keys..., "child-sas": {vici child
        key ("<name>-<unique id>", e.g. "net-1"): {"name", "state", "spi-in", ...}}}}.

        Values are strings exactly as vici gives them (SPIs as 8/16 hex digits without 0x,
        counters as decimal strings), local-ts/remote-ts lists of strings. Added (not vici's):
        "established" (state == ESTABLISHED), "local-spi"/"remote-spi" (initiator-spi or
        responder-spi by "initiator"). Example IKE keys: uniqueid version state local-host
        local-port local-id remote-host remote-port remote-id initiator initiator-spi
        responder-spi nat-remote nat-any encr-alg encr-keysize integ-alg prf-alg dh-group
        established (seconds!) rekey-time; CHILD: name uniqueid reqid state mode protocol encap
        spi-in spi-out encr-alg encr-keysize [integ-alg] bytes-in packets-in use-in bytes-out
        packets-out use-out rekey-time life-time install-time local-ts remote-ts.
        Note vici's own "established" is seconds since establishment: it is overwritten here by
        the bool; the seconds stay under "established-seconds"."""
        out = self.swanctl("--list-sas", "--raw").stdout
        sas: dict = {}
        for line in out.splitlines():
            m = re.match(r"^list-sa event (\{.*\})\s*$", line.strip())
            if not m:
                continue
            doc = parse_vici_raw(m[1])
            for name, ike in doc.items():
                if "established" in ike:
                    ike["established-seconds"] = ike["established"]
                ike["established"] = ike.get("state") == "ESTABLISHED"
                # convenience (not vici's): this side's and the peer's IKE SPI
                mine, theirs = ("initiator-spi", "responder-spi")[::1 if ike.get("initiator") == "yes" else -1]
                ike["local-spi"], ike["remote-spi"] = ike.get(mine), ike.get(theirs)
                ike.setdefault("child-sas", {})
                sas[name] = ike
        return sas

    def child_sas(self, ike: str | None = None, name: str | None = None) -> list[dict]:
        """The CHILD_SAs of list_sas() (of IKE_SA *ike* / named *name*), in vici's order."""
        out = []
        for ike_name, sa in self.list_sas().items():
            if ike is None or ike == ike_name:
                out += [c for c in sa["child-sas"].values() if name is None or c.get("name") == name]
        return out

    # -- the log
    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 60) -> str:
        out = self.out.read_text(errors="replace") if self.out.exists() else ""
        lines = self.log_text().splitlines()
        # the level-4 dumps hold secrets and are long: leave hex lines out of a failure report
        lines = [ln for ln in lines if not _HEX_LINE.match(_strip(ln)[2])]
        return (f"--- {self.log} (last {n} non-hex lines):\n" + "\n".join(lines[-n:])
                + (f"\n--- {self.out}:\n{out[-2000:]}" if out.strip() else ""))

    def wait_log(self, regex: str, timeout: float = 10, start: int = 0) -> re.Match:
        """The first match of *regex* (re.M) in the log from character offset *start* (e.g.
        ``len(c.log_text())`` taken before an action); polls. Raises CharonError on timeout."""
        try:
            return _nslib().wait_text(self.log_text, regex, timeout, start, str(self.log))
        except AssertionError as exc:
            raise CharonError(f"{exc}\n{self.tail()}") from None

    def keys(self) -> list[dict]:
        """The key material of the log (see parse_keys); IKE records without SPIs (made by an
        IKE rekey) get them from list_sas() if that IKE_SA still exists and charon runs."""
        records = parse_keys(self.log_text())
        if any(r["kind"] == "ike" and r["spi_i"] is None for r in records) and self.running:
            by_id = {}
            for name, sa in self.list_sas().items():
                by_id[(name, sa.get("uniqueid"))] = (sa.get("initiator-spi"), sa.get("responder-spi"))
            for r in records:
                if r["kind"] == "ike" and r["spi_i"] is None:
                    r["spi_i"], r["spi_r"] = by_id.get((r["ike"], str(r["ike_id"])), (None, None))
        return records


# -- parsing ----------------------------------------------------------------------------------

def parse_vici_raw(text: str) -> dict:
    """swanctl --raw output of one message: ``{a=1 b {c=2} d=[x y]}`` -> nested dicts/lists.
    vici raw output prints values without quoting; values have no spaces, braces or brackets
    except inside lists of traffic selectors (``local-ts=[10.1.0.1/32]``)."""
    tokens = re.findall(r"\{|\}|\[|\]|[^\s{}\[\]=]+=|[^\s{}\[\]]+", text)
    pos = 0

    def items() -> list:
        nonlocal pos
        pos += 1
        out = []
        while tokens[pos] != "]":
            out.append(tokens[pos])
            pos += 1
        pos += 1
        return out

    def section() -> dict:
        nonlocal pos
        assert tokens[pos] == "{", tokens[pos:pos + 5]
        pos += 1
        out: dict = {}
        while tokens[pos] != "}":
            tok = tokens[pos]
            pos += 1
            if tok.endswith("="):                       # key=value or key=[list]
                key = tok[:-1]
                if tokens[pos] == "[":
                    out[key] = items()
                elif tokens[pos] in ("}", "{"):         # empty value
                    out[key] = ""
                else:
                    out[key] = tokens[pos]
                    pos += 1
            elif tokens[pos] == "[":                    # key [list]
                out[tok] = items()
            else:                                       # key {section}
                out[tok] = section()
        pos += 1
        return out

    return section()


def _strip(line: str) -> tuple[str, str, str]:
    """(thread, ike tag "name|unique", message) of a filelog line; ("", "", line) if not one."""
    m = _LOG_LINE.match(line)
    return (m[1], m[3] or "", m[4]) if m else ("", "", line)


_DUMP_HEAD = re.compile(r"^(.+?) => (\d+) bytes @ 0x[0-9a-fA-F]+$")
_IKE_KEYS = {"SKEYSEED": "SKEYSEED", "Sk_d secret": "Sk_d", "Sk_ai secret": "Sk_ai", "Sk_ar secret": "Sk_ar",
             "Sk_ei secret": "Sk_ei", "Sk_er secret": "Sk_er", "Sk_pi secret": "Sk_pi", "Sk_pr secret": "Sk_pr"}
_CHILD_KEYS = {"encryption initiator key": "encr_i", "encryption responder key": "encr_r",
               "integrity initiator key": "integ_i", "integrity responder key": "integ_r"}
_IKE_REKEYED = re.compile(r"^IKE_SA (\S+)\[(\d+)\] rekeyed between ")
_CHILD_UP = re.compile(r"^(?:inbound |outbound )?CHILD_SA (\S+)\{(\d+)\} established with SPIs "
                       r"([0-9a-f]{8})_i\*? ([0-9a-f]{8})_o")


def _tag(tag: str) -> tuple[str | None, int | None]:
    """"gw|1" -> ("gw", 1); "1" (an IKE_SA whose config is not known yet: the responder's
    IKE_SA_INIT) -> (None, 1)."""
    name, bar, unique = tag.partition("|")
    if not bar:
        return (None, int(name)) if name.isdigit() else (name or None, None)
    return name, int(unique) if unique.isdigit() else None


def parse_keys(log: str) -> list[dict]:
    """The key material charon logged at ike/chd level 4, in log order.

    The filelog lines look like this (shown with time_format "%b %e %T"; this harness writes
    "%F %T"; the prefix before "NN[SUB]" does not matter to the parser; ike_name = yes)::

        Nov 27 12:54:58 10[IKE] <gw|1> natd_chunk => 22 bytes @ 0x7f3484003fb0
        Nov 27 12:54:58 10[IKE] <gw|1>    0: 9B F6 14 2D E0 F2 33 3E 36 3B 29 71 23 C8 26 6D  ...-..3>6;)q#.&m
        Nov 27 12:54:58 10[IKE] <gw|1>   16: C0 00 02 02 11 94                                ......
        Nov 27 12:54:58 10[IKE] <gw|1> SKEYSEED => 32 bytes @ 0x7f348400bc50
        Nov 27 12:54:58 10[IKE] <gw|1> Sk_d secret => 32 bytes @ ...   (Sk_ai Sk_ar Sk_ei Sk_er Sk_pi Sk_pr)
        Nov 27 12:54:58 13[CHD] <gw|1> encryption initiator key => 20 bytes @ ...  (GCM: key + 4-byte salt)
        Nov 27 12:54:58 13[CHD] <gw|1> encryption responder key => 20 bytes @ ...
        (integrity initiator key / integrity responder key: only for non-AEAD algorithms)
        Nov 27 12:54:58 13[CHD] <gw|1> adding inbound ESP SA
        Nov 27 12:54:58 13[CHD] <gw|1>   SPI 0x49de4473, src 192.0.2.2 dst 192.0.2.1
        Nov 27 12:54:58 13[IKE] <gw|1> CHILD_SA net{1} established with SPIs 49de4473_i 05fdafd6_o and TS ...

    Records (a dump belongs to the thread that printed it; lines of other threads may interleave):

    - ``{"kind": "ike", "ike": name, "ike_id": unique id, "spi_i": hex, "spi_r": hex,
      "SKEYSEED": bytes, "Sk_d", "Sk_ai", "Sk_ar", "Sk_ei", "Sk_er", "Sk_pi", "Sk_pr": bytes}``.
      The SPIs (16 lowercase hex digits) come from the last NAT-D input dump (``natd_chunk`` =
      SPIi | SPIr | address | port) of that IKE_SA with a non-zero SPIr. An IKE_SA made by an
      IKE rekey (CREATE_CHILD_SA) has no NAT-D and charon logs its SPIs nowhere: spi_i/spi_r
      are None there (Charon.keys() fills them from list_sas() while that IKE_SA exists), and
      its ike_id is the new IKE_SA's (from "IKE_SA gw[2] rekeyed between ..." on the
      initiator; the responder logs the keys under the new id already).
    - ``{"kind": "child", "ike": name, "ike_id": ..., "child": name, "child_id": unique id,
      "encr_i", "encr_r", "integ_i", "integ_r": bytes (b"" when there is no such key),
      "spi_in": int, "spi_out": int}`` - this side's inbound/outbound SPIs, from the
      "CHILD_SA NAME{N} established with SPIs XXXXXXXX_i YYYYYYYY_o" line of the same thread
      (None if the SA never got that far). "i"/"r" are initiator/responder of the exchange
      that created the CHILD_SA (encr_i protects initiator-to-responder traffic).
    """
    lines = log.splitlines()
    records: list[dict] = []
    ike_of: dict[str, dict] = {}       # thread -> the IKE record being filled
    child_of: dict[str, dict] = {}     # thread -> the CHILD record waiting for its SPIs
    spis_of: dict[str, tuple[str, str]] = {}   # ike tag -> SPIs seen in NAT-D input
    i = 0
    while i < len(lines):
        thread, tag, msg = _strip(lines[i])
        i += 1
        head = _DUMP_HEAD.match(msg)
        if head:
            label, n = head[1], int(head[2])
            data = bytearray()
            j = i
            while j < min(len(lines), i + 400) and len(data) < n:
                t2, _, m2 = _strip(lines[j])
                j += 1
                if t2 != thread:
                    continue           # another thread's line in between
                h = _HEX_LINE.match(m2)
                if not h:
                    break
                data += bytes.fromhex(h[1])
            data = bytes(data[:n])
            name, unique = _tag(tag)
            if label == "natd_chunk" and len(data) >= 16 and data[8:16] != bytes(8):
                spis_of[tag] = (data[:8].hex(), data[8:16].hex())
            elif label in _IKE_KEYS:
                key = _IKE_KEYS[label]
                rec = ike_of.get(thread)
                if key == "SKEYSEED" or rec is None or key in rec:
                    spi_i, spi_r = spis_of.pop(tag, (None, None))
                    rec = {"kind": "ike", "ike": name, "ike_id": unique, "spi_i": spi_i, "spi_r": spi_r}
                    records.append(rec)
                    ike_of[thread] = rec
                rec[key] = data
            elif label in _CHILD_KEYS:
                key = _CHILD_KEYS[label]
                rec = child_of.get(thread)
                if rec is None or key in rec:
                    rec = {"kind": "child", "ike": name, "ike_id": unique, "child": None, "child_id": None,
                           "spi_in": None, "spi_out": None}
                    records.append(rec)
                    child_of[thread] = rec
                rec[key] = data
            continue
        m = _IKE_REKEYED.match(msg)
        if m and thread in ike_of and ike_of[thread]["spi_i"] is None:
            ike_of[thread].update(ike=m[1], ike_id=int(m[2]))      # the new IKE_SA's id
        m = _CHILD_UP.match(msg)
        if m and thread in child_of:
            rec = child_of.pop(thread)
            rec.update(child=m[1], child_id=int(m[2]), spi_in=int(m[3], 16), spi_out=int(m[4], 16))
    names = {}                         # unique id -> IKE_SA name, from any "<name|id>" tag
    for m in re.finditer(r"\] <([^|>]+)\|(\d+)> ", log):
        names.setdefault(int(m[2]), m[1])
    for rec in records:
        if rec["ike"] is None and rec["ike_id"] is not None:
            rec["ike"] = names.get(rec["ike_id"])
        if rec["kind"] == "child":
            for key in _CHILD_KEYS.values():
                rec.setdefault(key, b"")
    return records


# -- capturing IKE ----------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in(ns: Netns, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created inside network namespace *ns* (it stays there, usable from here)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(family, type_, proto)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


class IkeCapture(list):
    """The raw IKE messages (bytes, non-ESP marker removed) seen so far, in order; ``records``
    holds the same as dicts {"time", "src", "sport", "dst", "dport", "outgoing", "ike"}, and
    ``frames`` every captured Ethernet frame (time, bytes) for write_pcap()."""

    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        self.frames: list[tuple[float, bytes]] = []

    def write_pcap(self, path) -> None:
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for t, frame in self.frames:
                f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
                f.write(frame)


def ike_payload(frame: bytes) -> tuple[str, int, str, int, bytes] | None:
    """(src, sport, dst, dport, IKE message) of an Ethernet frame carrying IKE on UDP 500 or
    4500 (non-ESP marker stripped), else None (ESP-in-UDP, NAT-T keepalives, anything else).
    IPv4 only; IP fragments are skipped (charon negotiates IKE fragmentation, RFC 7383, and
    then sends SKF messages of at most 1280 bytes instead)."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != 17 or struct.unpack("!H", ip[6:8])[0] & 0x3FFF:
        return None                                  # not UDP, or a fragment
    total = struct.unpack("!H", ip[2:4])[0]
    udp = ip[ihl:total]
    sport, dport, ulen = struct.unpack("!HHH", udp[:6])
    payload = udp[8:ulen]
    if 4500 in (sport, dport):
        if len(payload) < 4 or payload[:4] != b"\0\0\0\0":
            return None                              # ESP-in-UDP or a keepalive (0xff)
        payload = payload[4:]
    elif 500 not in (sport, dport):
        return None
    if len(payload) < 28:
        return None
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    return src, sport, dst, dport, payload


@contextlib.contextmanager
def capture_ike(ns: Netns, iface: str, pcap: str | os.PathLike | None = None):
    """Capture on *iface* in *ns* (an AF_PACKET socket made inside the namespace, both
    directions): yields an :class:`IkeCapture` (a list of raw IKE messages, bytes) filled while
    the block runs and drained when it ends (after a short settle). With *pcap*, all frames
    seen are also written there as a pcap file on exit."""
    sock = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((iface, 0))
    sock.setblocking(False)
    cap = IkeCapture()
    stop = threading.Event()

    def drain() -> None:
        while True:
            try:
                frame, addr = sock.recvfrom(65535)
            except BlockingIOError:
                return
            t = time.time()
            cap.frames.append((t, frame))
            got = ike_payload(frame)
            if got:
                src, sport, dst, dport, msg = got
                cap.records.append({"time": t, "src": src, "sport": sport, "dst": dst, "dport": dport,
                                    "outgoing": addr[2] == socket.PACKET_OUTGOING, "ike": msg})
                cap.append(msg)

    def loop() -> None:
        while not stop.is_set():
            select.select([sock], [], [], 0.05)
            drain()

    th = threading.Thread(target=loop, name=f"capture-{ns.name}-{iface}", daemon=True)
    th.start()
    try:
        yield cap
    finally:
        time.sleep(0.05)
        stop.set()
        th.join()
        drain()
        sock.close()
        if pcap is not None:
            cap.write_pcap(pcap)


# -- configuration ------------------------------------------------------------------------------

def _lines(text: str, indent: str) -> str:
    return "\n".join(indent + line.strip() for line in text.strip().splitlines() if line.strip())


def swanctl_conf(*, local_addrs: str, remote_addrs: str, proposals: str, local: str, remote: str,
                 local_ts: str, remote_ts: str, esp: str, connection: str = "gw", child: str = "net",
                 conn_options: str = "", child_options: str = "", secrets: str = "") -> str:
    """A swanctl.conf with one IKEv2 connection and one child; *local*, *remote* and the
    options are "key = value" lines (e.g. "auth = psk\nid = @gw.example")."""
    conn_opts = _lines(conn_options, "        ")
    child_opts = _lines(child_options, "                ")
    return f"""\
connections {{
    {connection} {{
        version = 2
        local_addrs = {local_addrs}
        remote_addrs = {remote_addrs}
        proposals = {proposals}
{conn_opts}
        local {{
{_lines(local, "            ")}
        }}
        remote {{
{_lines(remote, "            ")}
        }}
        children {{
            {child} {{
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = {esp}
{child_opts}
            }}
        }}
    }}
}}
{secrets}
"""


def psk_secret(secret: str, *ids: str, name: str = "ike-psk") -> str:
    """A swanctl.conf secrets section: one PSK, for *ids* (any identity when none)."""
    owners = "".join(f"        id-{i} = {ident}\n" for i, ident in enumerate(ids))
    return f'secrets {{\n    {name} {{\n{owners}        secret = "{secret}"\n    }}\n}}\n'


# -- two namespaces, and our IKE sockets in one of them ---------------------------------------

MARKER = b"\0\0\0\0"                # the non-ESP marker in front of IKE on 4500 (RFC 3948 2.2)


class Pair:
    """Namespaces *a* and *b* joined by a veth link (``a_if``, ``b_if``), each with an inner
    /32 on lo when given, a state directory for the test's processes (``state(role)``) and,
    with *ike_sockets*, UDP 500 and 4500 sockets bound to *a_addr* inside *a* (``socks``, by
    port) for an IKE daemon running in this process. ``teardown()`` stops every charon,
    closes the sockets and deletes both namespaces and the directory."""

    def __init__(self, a_role: str, a_addr: str, b_role: str, b_addr: str, *, a_inner: str | None = None,
                 b_inner: str | None = None, ike_sockets: bool = False, rcvbuf: int | None = None):
        self.dir = state_root()
        self.a, self.b = Netns(a_role), Netns(b_role)
        self.a_if, self.b_if = link(self.a, a_addr, self.b, b_addr)
        for ns, inner in ((self.a, a_inner), (self.b, b_inner)):
            if inner:
                add_lo_address(ns, f"{inner}/32")
        self.socks: dict[int, socket.socket] = {}
        for port in (500, 4500) if ike_sockets else ():
            sock = socket_in(self.a, socket.AF_INET, socket.SOCK_DGRAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((a_addr, port))
            sock.setblocking(False)
            self.socks[port] = sock
        self.count = 0

    def state(self, role: str) -> Path:
        self.count += 1
        d = self.dir / f"{self.count}-{role}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def send_ike(self, data: bytes, to: tuple[str, int], port: int) -> None:
        """An IKE daemon's send callable: from our port *port*, with the marker on 4500."""
        self.socks[port].sendto(MARKER + data if port == 4500 else data, to)

    def receive_ike(self, deliver, timeout: float) -> None:
        """Wait up to *timeout* for datagrams, then hand each pending IKE message to
        ``deliver(data, (addr, port), our_port)`` (ESP and keepalives on 4500 are skipped)."""
        ready, _, _ = select.select(list(self.socks.values()), [], [], timeout)
        for port, sock in self.socks.items():
            while sock in ready:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if port == 4500:
                    if data[:4] != MARKER or len(data) <= 4:
                        continue
                    data = data[4:]
                deliver(data, addr, port)

    def drain(self) -> None:
        """Forget whatever is queued on our sockets (between tests)."""
        self.receive_ike(lambda *_: None, 0)

    def teardown(self) -> None:
        stop_all()
        for sock in self.socks.values():
            sock.close()
        for ns in (self.a, self.b):
            ns.delete()
        shutil.rmtree(self.dir, ignore_errors=True)


def module_topology(factory):
    """The body of a module-scoped fixture: skipped with the reason when charon cannot run
    here, the topology from *factory*, always torn down::

        @pytest.fixture(scope="module")
        def topo():
            yield from ss.module_topology(Topo)
    """
    import pytest

    reason = available()
    if reason:
        pytest.skip(reason)
    topology = factory()
    try:
        yield topology
    finally:
        topology.teardown()


# -- cleanup ----------------------------------------------------------------------------------

def stop_all() -> None:
    """Stop every charon this process started (by their pids): SIGTERM to all first, then
    each waited for (charon takes about 1.5 s to exit)."""
    for c in list(_CHARONS):
        if c.proc is not None and c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    for c in list(_CHARONS):
        try:
            c.stop()
        except Exception:  # pragma: no cover - keep cleaning up
            pass


def cleanup() -> None:
    """stop_all(), then delete every namespace this process created."""
    stop_all()
    for ns in list(_NAMESPACES):
        try:
            ns.delete()
        except Exception:  # pragma: no cover
            pass


atexit.register(cleanup)
