"""The control channel: a running engine's management API over a Unix stream socket.

The protocol is JSON lines. A client sends one request object per line, ``{"op": "sa_list"}``
or ``{"op": "sa_del", "spi": 4097, "dst": "198.51.100.2", "direction": "out"}``, and gets
one response line back: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
A connection may carry any number of requests, one at a time. docs/cli.md lists the ops.

The socket can install keys, so it is created with mode 0600: only the engine's user (and
root) may connect. Results never carry key material: whatever a result holds is turned into
plain JSON by :func:`plain`, which drops keys named like secrets and refuses bytes.

:func:`run_engine` is ``ipsp engine``: an :class:`~ipsp.engine.Engine` without packet I/O,
its configuration file, this socket, a tick every second and the usual signals.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import ipaddress
import json
import logging
import os
import queue
import resource
import selectors
import signal
import socket
import stat
import threading
import time
from typing import Any, Callable

from ipsp.config import Config, ManualSA, config_from_document, load_config
from ipsp.errors import ConfigError, IpsecError, redact, shown
from ipsp.spd import ANY, Policy

__all__ = ["ControlServer", "ControlClient", "ControlError", "MAX_LINE", "MAX_CONNECTIONS", "IDLE_TIMEOUT",
           "load_safely", "plain", "policy_row",
           "manual_sa_row", "peer_row", "run_engine", "serve", "SIGNALS"]

log = logging.getLogger("ipsp.control")

MAX_LINE = 1 << 20                 # a request line longer than this is refused
MAX_CONNECTIONS = 4096             # connections at once; more are refused with an error
IDLE_TIMEOUT = 300.0               # seconds a connection may stay silent before it is closed
WORKERS = 4                        # threads that run requests (the connections need none)
_SECRETS = {"enc_key", "auth_key", "psk"}


class ControlError(IpsecError):
    """The engine refused a request, or could not be reached; the message says why."""


# -- JSON-safe results ------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """*value* as JSON types: enums by name, addresses and prefixes as strings, dataclasses
    as objects. Entries named like a secret are dropped wherever they are, and bytes are
    refused outright, so no code path can put key material on the socket by accident."""
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("bytes in a control result")
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                          ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if k not in _SECRETS}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    raise TypeError(f"{type(value).__name__} in a control result")


def policy_row(p: Policy) -> dict:
    s = p.selector
    return {"id": p.id, "direction": p.direction.name, "action": p.action.name, "priority": p.priority,
            "src": str(s.src), "dst": str(s.dst), "proto": "any" if s.proto == ANY else s.proto,
            "sport": list(s.sport), "dport": list(s.dport), "reqid": p.reqid, "label": p.label}


def manual_sa_row(m: ManualSA) -> dict:
    """A configuration file's SA as ``sa_list`` shows an installed one (without keys)."""
    c = m.config
    return {"spi": c.spi, "direction": m.direction, "src": str(c.src), "dst": str(c.dst),
            "group_source": None if m.group_source is None else str(m.group_source),
            "proposal": c.transform.name, "mode": c.mode, "encap": "udp" if c.udp else None, "fragment": c.fragment,
            "reqid": m.reqid, "label": m.label, "lifetimes": plain(m.lifetimes)}


def peer_row(p) -> dict:
    return {"name": p.name, "auth": p.auth, "id": [str(i) for i in p.identities], "ca": p.ca,
            "addresses": [str(n) for n in p.addresses], "allowed": [str(n) for n in p.allowed]}


def config_summary(cfg: Config) -> dict:
    return {"path": cfg.path, "engine": plain(cfg.engine), "peers": [peer_row(p) for p in cfg.peers],
            "policies": [policy_row(p) for p in cfg.policies], "sas": [manual_sa_row(m) for m in cfg.sas],
            "gateway": plain(cfg.gateway), "ike": None if cfg.ike is None else {
                k: v for k, v in plain(cfg.ike).items() if k != "key"},
            "connections": [connection_row(c) for c in cfg.connections]}


def connection_row(c) -> dict:
    return {"name": c.name, "peer": c.peer, "remote": None if c.remote is None else str(c.remote),
            "local_ts": [str(n) for n in c.local_ts], "remote_ts": [str(n) for n in c.remote_ts],
            "reqid": c.reqid, "ike_proposals": [p.name for p in c.ike_proposals],
            "esp_proposals": [p.name for p in c.esp_proposals], "start": c.start, "ike_rekey": c.ike_rekey,
            "child_rekey": c.child_rekey, "dpd": c.dpd, "encap": c.encap}


# -- requests -----------------------------------------------------------------------------------

_TYPES = {int: "an integer", str: "a string", bool: "true or false"}
def _param(params: dict, name: str, kind: type, default: Any = ..., *, spi: bool = False,
           lo: int = 0, hi: int = (1 << 63) - 1) -> Any:
    if name not in params:
        if default is ...:
            raise ConfigError(f"missing parameter {name!r}")
        return default
    value = params[name]
    if spi and isinstance(value, str):        # SPIs as the tables show them: "0x00001001"
        try:
            value = int(value, 0) if len(value) <= 20 else None
        except ValueError:
            value = None
        if value is None:
            raise ConfigError(f"parameter {name!r} must be an integer or '0x...', got {shown(params[name])}")
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"parameter {name!r} must be {_TYPES[kind]}, got {shown(value)}")
    if kind is int and not lo <= value <= hi:
        raise ConfigError(f"parameter {name!r} must lie within {lo}..{hi:#x}, got {shown(value)}")
    if kind is str and "\0" in value:
        raise ConfigError(f"parameter {name!r} contains a NUL character")
    return value


def _only(params: dict, *names: str) -> None:
    unknown = sorted(set(params) - set(names))
    if unknown:
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        # a plain name as it was written; ConfigError hides one that could be a key
        names = [u if u.isidentifier() else shown(u) for u in unknown[:8]]
        raise ConfigError(f"unknown parameter(s) {', '.join(names)}{more}")


def _one(doc_key: str, table: dict) -> Config:
    """One [[sa]] or [[policy]] table checked by the configuration file's own rules; errors
    name the key inside the table (``dport: ...``), as there is no file."""
    try:
        return config_from_document({doc_key: [table]})     # env: this (the server's) process
    except ConfigError as exc:
        key = (exc.key or "").removeprefix(f"{doc_key}[0]").lstrip(".")
        raise ConfigError(exc.message, key=key or None) from None


class ControlServer:
    """Serves the control protocol for *engine* on the Unix socket *path*."""

    def __init__(self, engine, path: str | os.PathLike[str], *, config_path: str | os.PathLike[str] | None = None,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT, workers: int = WORKERS):
        if max_connections < 1 or idle_timeout <= 0 or workers < 1:
            raise ConfigError("max_connections and workers must be 1 or more, idle_timeout above 0")
        self.engine = engine
        self.path = os.fspath(path)
        self.config_path = None if config_path is None else os.fspath(config_path)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.workers = workers
        self._server: _Loop | None = None
        self._inode: tuple[int, int] | None = None
        self._reload_lock = threading.Lock()
        self._stopping = threading.Event()
        self._ops: dict[str, Callable[[dict], Any]] = {
            "sa_list": self._sa_list, "sa_add": self._sa_add, "sa_del": self._sa_del,
            "policy_list": self._policy_list, "policy_add": self._policy_add, "policy_del": self._policy_del,
            "stats": self._stats, "prometheus": self._prometheus, "events": self._events, "reload": self._reload,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "ControlServer":
        self._clear_path()
        self._stopping.clear()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind under a umask so the socket is never, even briefly, open to others (a chmod
            # after bind alone leaves a window); the umask is process-wide: restored at once
            old = os.umask(0o177)
            try:
                listener.bind(self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            # the kernel's own bound (net.core.somaxconn) rather than socketserver's 5: a burst
            # of clients waits in the queue instead of failing with EAGAIN
            listener.listen(socket.SOMAXCONN)
            listener.setblocking(False)
            self._server = _Loop(self, listener)
        except BaseException:
            listener.close()
            raise
        log.info("control socket %s", self.path)
        return self

    def _clear_path(self) -> None:
        """Refuse a path where an engine answers; remove a stale socket left by a crash."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)       # nobody listens: a stale socket file
            return
        except OSError:
            pass                       # a full queue or a slow engine: someone listens
        finally:
            probe.close()
        raise ControlError(f"an engine already answers on {self.path}")

    def close(self) -> None:
        """Stop serving, drop open connections and remove the socket (if it is still ours).
        A reload still running is abandoned (see :meth:`apply`)."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:    # not a successor's socket
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, line: bytes) -> dict:
        """One request line to one response object; never raises. Whatever the line holds
        (invalid UTF-8, nesting deep enough to exhaust the parser, numbers past every width,
        the wrong type anywhere) ends in an error response naming what is wrong."""
        try:
            request = json.loads(line)
        except RecursionError:
            return {"ok": False, "error": "not a JSON request: nested too deeply"}
        except UnicodeDecodeError as exc:
            return {"ok": False, "error": f"not a JSON request: not UTF-8 (byte {exc.start})"}
        except ValueError as exc:          # JSONDecodeError, and int() of 4300+ digits
            reason = f"{exc.msg} at byte {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "a number too long"
            return {"ok": False, "error": f"not a JSON request: {reason}"}
        except MemoryError:
            return {"ok": False, "error": "not a JSON request: too large to decode"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": 'a request is a JSON object with an "op" string'}
        op = request.pop("op")
        handler = self._ops.get(op)
        if handler is None:
            return {"ok": False, "error": f"unknown op {shown(op)} (known: {', '.join(self._ops)})"}
        try:
            return {"ok": True, "result": plain(handler(request))}
        except ConfigError as exc:         # "dport: port range 2000-1000 must ..."
            return {"ok": False, "error": str(exc)}
        except KeyError as exc:            # "no outbound SA with SPI 0x1001 to ..."
            return {"ok": False, "error": str(exc.args[0] if exc.args else exc)}
        except RecursionError:
            return {"ok": False, "error": f"{op}: a parameter is nested too deeply"}
        except Exception:
            # the message could say anything; the log has the traceback, the client a pointer
            log.exception("control op %s failed", op)
            return {"ok": False, "error": f"{op}: internal error (see the engine's log)"}

    def counters(self) -> dict:
        """The control socket's own counters (the "control" section of ``stats``)."""
        loop = self._server
        return loop.counters() if loop is not None else {}

    # -- ops --------------------------------------------------------------------------------

    def _sa_list(self, params: dict) -> list[dict]:
        _only(params)
        return self.engine.sa_list()

    def _sa_add(self, table: dict) -> list[dict]:
        sas = _one("sa", table).sas          # a per-sender group SA is one SA per sender
        km = self.engine.km
        for m in sas:                        # checked first: a half-installed group is no use
            if _installed(km, m):
                sender = f" from {m.group_source}" if m.group_source else ""
                raise ConfigError(f"an {m.direction}bound SA with SPI {m.config.spi:#x} to {m.config.dst}"
                                  f"{sender} is already installed", key="spi")
        added = []
        with self.engine.changes():          # one table swap for the lot
            try:
                for m in sas:
                    added.append(km.add_sa(m.config, m.direction, lifetimes=m.lifetimes, label=m.label,
                                           reqid=m.reqid, group_source=m.group_source))
            except BaseException:
                for sa in added:
                    km.sad.remove(sa)
                raise
        for sa in added:
            log.info("control: added %sbound SA %#010x to %s", sa.direction, sa.spi, sa.dst)
        return [{"spi": sa.spi, "dst": str(sa.dst), "direction": sa.direction,
                 "group_source": None if sa.group_source is None else str(sa.group_source)} for sa in added]

    def _sa_del(self, params: dict) -> dict:
        _only(params, "spi", "dst", "direction", "group_source")
        spi = _param(params, "spi", int, spi=True, hi=0xFFFFFFFF)
        dst = _address(_param(params, "dst", str), "dst")
        direction = _param(params, "direction", str)
        if direction not in ("in", "out"):
            raise ConfigError(f"parameter 'direction' must be 'in' or 'out', got {shown(direction)}")
        source = _param(params, "group_source", str, None)
        self.engine.km.del_sa(spi, dst, direction,
                              group_source=None if source is None else _address(source, "group_source"))
        log.info("control: deleted %sbound SA %#010x to %s", direction, spi, dst)
        return {"spi": spi, "dst": str(dst), "direction": direction}

    def _policy_list(self, params: dict) -> list[dict]:
        _only(params)
        return [policy_row(p) for p in self.engine.policy_list()]

    def _policy_add(self, table: dict) -> dict:
        p = _one("policy", table).policies[0]
        p = self.engine.km.add_policy(p)
        log.info("control: added policy %d", p.id)
        return policy_row(p)

    def _policy_del(self, params: dict) -> dict:
        _only(params, "id")
        policy_id = _param(params, "id", int)
        self.engine.km.del_policy(policy_id)
        log.info("control: deleted policy %d", policy_id)
        return {"id": policy_id}

    def _stats(self, params: dict) -> dict:
        _only(params)
        return {**self.engine.counters(), "control": self.counters()}

    def _prometheus(self, params: dict) -> str:
        _only(params)
        c = self.counters()
        lines = ["# HELP ipsp_control_connections Connections open on the control socket.",
                 "# TYPE ipsp_control_connections gauge", f"ipsp_control_connections {c.get('connections', 0)}",
                 "# HELP ipsp_control_events_total Control socket connections and refusals, by kind.",
                 "# TYPE ipsp_control_events_total counter"]
        lines += [f'ipsp_control_events_total{{kind="{k}"}} {c.get(k, 0)}'
                  for k in ("accepted", "refused_over_limit", "closed_idle", "lines_too_long", "accept_errors")]
        return self.engine.prometheus() + "\n".join(lines) + "\n"

    def _events(self, params: dict) -> list[dict]:
        _only(params, "since")
        return self.engine.events(_param(params, "since", int, 0))

    def _reload(self, params: dict) -> dict:
        _only(params, "path")
        # a client waits for its own reload, never behind another's: one worker at most
        path = _param(params, "path", str, None)
        if path is not None and not path:
            raise ConfigError("parameter 'path' is empty (leave it out for the engine's own file)")
        if path is not None and (len(path.encode("utf-8", "surrogateescape")) > 4096 or not path.isprintable()):
            raise ConfigError("parameter 'path' must be a printable file name of at most 4096 bytes")
        return self.reload(path, wait=False)

    def reload(self, path: str | None = None, *, wait: bool = True) -> dict:
        """Apply the configuration file at *path* (default: the server's); all or nothing:
        a file that does not load, or does not fit the running engine, changes nothing.
        Raises only ConfigError, whatever went wrong (see :func:`load_safely`). Reloads run
        one at a time; with *wait* false one that finds another running is refused."""
        path = path or self.config_path
        if path is None:
            raise ConfigError("no configuration file: the server was started without one; give a path")
        if not self._reload_lock.acquire(blocking=wait):
            raise ConfigError("a reload is already in progress; try again when it has finished")
        try:
            cfg = load_safely(path)
            try:
                self.apply(cfg)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(_failure(exc, "applying"), path=_where(path)) from None
        finally:
            self._reload_lock.release()
        # the socket itself stays where it is
        if cfg.engine.control_socket and os.path.abspath(cfg.engine.control_socket) != os.path.abspath(self.path):
            log.warning("control_socket changed to %s: it takes effect on restart", cfg.engine.control_socket)
        summary = {"path": os.fspath(path), "peers": len(cfg.peers), "policies": len(cfg.policies),
                   "sas": len(cfg.sas)}
        log.info("loaded %(path)s: %(peers)d peers, %(policies)d policies, %(sas)d SAs", summary)
        return summary

    def apply(self, cfg: Config) -> None:
        """Install a loaded configuration, all or nothing (a subclass adds its own part);
        abandoned if the server closes meanwhile (the engine is stopping)."""
        self.engine.apply_config(cfg, cancelled=self._stopping.is_set)


def _where(path) -> str | None:
    """A path fit for a message: not one with a NUL or a newline (it would garble the log
    line), nor one that holds a long hex run (a key typed where a file name goes)."""
    text = os.fspath(path)
    return text if redact(text) == text else None


def _failure(exc: BaseException, doing: str) -> str:
    """What went wrong, in words that never quote the exception's own text (it could hold
    anything, key material included): the kind of failure, and for the OS its reason."""
    if isinstance(exc, RecursionError):
        return f"nested too deeply while {doing} the configuration"
    if isinstance(exc, MemoryError):
        return f"out of memory while {doing} the configuration"
    if isinstance(exc, OSError):
        return f"cannot read it: {exc.strerror or type(exc).__name__}"
    log.debug("%s the configuration failed", doing, exc_info=exc)
    return f"{type(exc).__name__} while {doing} the configuration (details at debug level in the log)"


def load_safely(path) -> Config:
    """:func:`~ipsp.config.load_config`, raising ConfigError for every failure (a read error,
    a parser's RecursionError, MemoryError, a bug): a running engine keeps its configuration
    whatever a new file holds, and the message says what is wrong without quoting values."""
    try:
        return load_config(path)
    except ConfigError as exc:
        if exc.path is not None and _where(exc.path) is None:
            raise ConfigError(exc.message, key=exc.key) from None
        raise
    except Exception as exc:
        raise ConfigError(_failure(exc, "loading"), path=_where(path)) from None


def _address(value: str, name: str):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"parameter {name!r}: {shown(value)} is not an IPv4 or IPv6 address") from None


def _installed(km, m: ManualSA) -> bool:
    for sa in km.sad:
        if (sa.direction == m.direction and sa.spi == m.config.spi and sa.dst == m.config.dst
                and (m.direction == "out" or sa.group_source == m.group_source)):
            return True
    return False


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "last", "busy", "skipping", "eof", "mask")

    def __init__(self, sock: socket.socket, now: float):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last = now            # the last time it sent or took bytes
        self.busy = False          # a request of it is with a worker
        self.skipping = False      # the rest of an over-long line is being discarded
        self.eof = False           # it shut down its sending side
        self.mask = 0              # the selector events it is registered for


class _Loop:
    """The control socket's server: one thread waits on every connection with a selector
    (epoll), so an idle connection costs a file descriptor and a few hundred bytes, never
    a thread; a small fixed pool of worker threads runs the requests.

    Per connection, requests are taken one at a time in order (the protocol's rule), and
    nothing more is read from a connection while its request runs or its answer waits to
    be sent, so a client that never reads its answers holds at most one line and one answer
    in memory. A connection silent for ``idle_timeout`` seconds (sending nothing, taking no
    bytes of an answer) is closed. Over ``max_connections`` at once (further bounded by the
    process's file descriptor limit), a new connection gets one error line and is closed.
    Each of these is counted (:meth:`counters`, the "control" section of ``stats``).
    """

    def __init__(self, control: "ControlServer", listener: socket.socket):
        self.control = control
        self.listener = listener
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        spare = soft - 64 if soft != resource.RLIM_INFINITY else control.max_connections
        self.max_connections = max(1, min(control.max_connections, spare))
        self.conns: dict[int, _Conn] = {}
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(listener, selectors.EVENT_READ, "listen")
        self.accept_paused_until = 0.0
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.done: collections.deque = collections.deque()
        self.stopping = False
        self.counts = collections.Counter(accepted=0, refused_over_limit=0, closed_idle=0, lines_too_long=0,
                                          accept_errors=0)
        self.threads = [threading.Thread(target=self._work, name=f"ipsp-control-{i}", daemon=True)
                        for i in range(control.workers)]
        self.thread = threading.Thread(target=self._run, name="ipsp-control", daemon=True)
        for t in self.threads:
            t.start()
        self.thread.start()

    def counters(self) -> dict:
        return {"connections": len(self.conns), "max_connections": self.max_connections, **self.counts}

    def stop(self) -> None:
        self.stopping = True
        self._wake()
        self.thread.join(5)
        for _ in self.threads:
            self.jobs.put(None)
        # workers are not joined: one may be in a long reload, which the closing server
        # abandons (ControlServer.apply); they are daemon threads and end with the process

    def _wake(self) -> None:
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass                       # full: the loop wakes anyway; closed: it has ended

    # -- the workers --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            conn, line = job
            try:
                response = self.control.handle(line)
            except BaseException:      # handle() never raises; this is the last line of defence
                log.exception("control request failed")
                response = {"ok": False, "error": "internal error (see the engine's log)"}
            self.done.append((conn, _encode(response)))
            self._wake()

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            next_sweep = time.monotonic() + 0.25
            while not self.stopping:
                for key, mask in self.sel.select(0.25):
                    if key.data == "wake":
                        try:
                            while self.wake_r.recv(4096):
                                pass
                        except OSError:
                            pass
                    elif key.data == "listen":
                        self._accept()
                    else:
                        conn = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                            self._write(conn)
                while self.done:
                    conn, data = self.done.popleft()
                    conn.busy = False
                    if conn.sock.fileno() >= 0:
                        conn.outbuf += data
                        self._write(conn)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 0.25
                    self._sweep(now)
        except Exception:
            log.exception("control socket loop failed")
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            self.sel.close()
            self.listener.close()
            self.wake_r.close()
            self.wake_w.close()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # out of descriptors (EMFILE, ENFILE) or memory: the connection waits in the
                # queue; stop asking for a moment instead of spinning on the same error
                self.counts["accept_errors"] += 1
                log.warning("control socket: cannot accept a connection: %s", exc.strerror or exc)
                self.sel.unregister(self.listener)
                self.accept_paused_until = time.monotonic() + 0.5
                return
            if len(self.conns) >= self.max_connections:
                self.counts["refused_over_limit"] += 1
                try:
                    sock.setblocking(False)
                    sock.send(_encode({"ok": False, "error": f"too many connections (at most "
                                       f"{self.max_connections}); try again later"}))
                except OSError:
                    pass
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic())
            self.conns[sock.fileno()] = conn
            self.counts["accepted"] += 1
            self._interest(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.last = time.monotonic()
        if data:
            conn.inbuf += data
        else:
            conn.eof = True
        self._advance(conn)

    def _advance(self, conn: _Conn) -> None:
        """Take the next request line of *conn*, if it has a whole one and nothing running."""
        while not conn.busy and not conn.outbuf:
            if conn.skipping:
                end = conn.inbuf.find(b"\n")
                if end < 0:
                    conn.inbuf.clear()
                    break
                del conn.inbuf[:end + 1]
                conn.skipping = False
                continue
            end = conn.inbuf.find(b"\n", 0, MAX_LINE)
            if end < 0 and len(conn.inbuf) >= MAX_LINE:
                self.counts["lines_too_long"] += 1
                conn.outbuf += _encode({"ok": False, "error": f"request line longer than {MAX_LINE} bytes"})
                del conn.inbuf[:MAX_LINE]
                conn.skipping = True
                self._write(conn)
                return
            if end < 0 and not (conn.eof and conn.inbuf):
                break
            # at the end of the stream an unterminated last line is still a request
            end = len(conn.inbuf) - 1 if end < 0 else end
            line = bytes(conn.inbuf[:end + 1])
            del conn.inbuf[:end + 1]
            if line.strip():
                conn.busy = True
                self.jobs.put((conn, line))
        if conn.eof and not conn.busy and not conn.outbuf and not conn.inbuf:
            self._close(conn)
            return
        self._interest(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)          # the client went away
            return
        if sent:
            del conn.outbuf[:sent]
            conn.last = time.monotonic()
        if conn.outbuf:
            self._interest(conn)
        else:
            self._advance(conn)

    def _interest(self, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        mask = (selectors.EVENT_WRITE if conn.outbuf else
                selectors.EVENT_READ if not conn.busy and not conn.eof else 0)
        if mask == conn.mask:
            return
        if conn.mask == 0:
            self.sel.register(conn.sock, mask, conn)
        elif mask == 0:
            self.sel.unregister(conn.sock)
        else:
            self.sel.modify(conn.sock, mask, conn)
        conn.mask = mask

    def _sweep(self, now: float) -> None:
        if self.accept_paused_until and now >= self.accept_paused_until:
            self.accept_paused_until = 0.0
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        limit = self.control.idle_timeout
        for conn in [c for c in self.conns.values() if not c.busy and now - c.last > limit]:
            self.counts["closed_idle"] += 1
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        if conn.mask:
            self.sel.unregister(conn.sock)
            conn.mask = 0
        self.conns.pop(fd, None)
        conn.sock.close()


def _encode(response: dict) -> bytes:
    try:
        return json.dumps(response).encode() + b"\n"
    except (TypeError, ValueError):     # a result no JSON can carry (plain() should rule it out)
        log.exception("control: unencodable response")
        return b'{"ok": false, "error": "internal error: the result cannot be encoded"}\n'


# -- the client ---------------------------------------------------------------------------------

class ControlClient:
    """Calls ops on the engine at *path*; one connection per call."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5):
        self.path = os.fspath(path)
        self.timeout = timeout

    def call(self, op: str, **params: Any) -> Any:
        # default=str: a TOML date in an SA file arrives as a string the engine refuses by name
        request = json.dumps({**params, "op": op}, default=str).encode() + b"\n"
        deadline = time.monotonic() + self.timeout
        sock = self._connect(deadline)
        try:
            try:
                sock.sendall(request)
            except OSError as exc:
                # an engine at its connection bound answers and closes before reading: the
                # answer saying so may be waiting, so read before calling it a closed connection
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
            with sock.makefile("rb") as f:
                line = f.readline()
        except TimeoutError:
            raise ControlError(f"no answer from the engine at {self.path} within {self.timeout:g} s") from None
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise ControlError(f"the engine at {self.path} closed the connection") from None
            raise
        finally:
            sock.close()
        if not line:
            raise ControlError(f"the engine at {self.path} closed the connection without answering")
        try:
            response = json.loads(line)
        except ValueError:
            response = None
        if not isinstance(response, dict):
            raise ControlError(f"{self.path} answered with something other than the ipsp control protocol")
        if not response.get("ok"):
            raise ControlError(response.get("error", "request failed"))
        return response.get("result")

    def _connect(self, deadline: float) -> socket.socket:
        """A connected socket. A Unix socket whose listen queue is full refuses at once with
        EAGAIN instead of waiting as TCP would: that is a busy engine, not a missing one, so
        try again with a growing pause (1 ms doubling to 100 ms) until the timeout."""
        pause = 0.001
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                sock.connect(self.path)
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                return sock
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause > deadline:
                    raise ControlError(f"the engine at {self.path} is too busy to take a connection "
                                       f"(its queue stayed full for {self.timeout:g} s)") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            except TimeoutError:
                sock.close()
                raise ControlError(f"no answer from the engine at {self.path} within {self.timeout:g} s") from None
            except FileNotFoundError:
                sock.close()
                raise ControlError(f"no engine at {self.path}: the socket does not exist "
                                   "(is `ipsp engine` running?)") from None
            except ConnectionRefusedError:
                sock.close()
                raise ControlError(f"nothing listens at {self.path} "
                                   "(a stale socket: is `ipsp engine` running?)") from None
            except PermissionError:
                sock.close()
                raise ControlError(f"permission denied connecting to {self.path} "
                                   "(the socket is for the engine's user only)") from None
            except OSError as exc:
                sock.close()
                raise ControlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None


# -- ipsp engine --------------------------------------------------------------------------------

def load_for_serving(config_path: str, socket_path: str | None) -> tuple[Config, str] | int:
    """The configuration and control socket path of ``ipsp engine`` and ``ipsp gateway``, or
    the exit status when there are none (1: a bad file; 2: no socket given anywhere)."""
    try:
        cfg = load_safely(config_path)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    socket_path = socket_path or cfg.engine.control_socket
    if not socket_path:
        log.error("no control socket: give --socket or set control_socket in [engine] of %s", config_path)
        return 2
    return cfg, socket_path


def run_engine(config_path: str, socket_path: str | None = None) -> int:
    """``ipsp engine``: apply the configuration, serve the control socket, tick every second;
    SIGHUP reloads, SIGTERM and SIGINT stop (keys wiped). Returns the exit status."""
    from ipsp.engine import Engine

    loaded = load_for_serving(config_path, socket_path)
    if isinstance(loaded, int):
        return loaded
    cfg, socket_path = loaded
    # the signals are blocked here, before the server's threads exist (they inherit the mask),
    # and taken synchronously by the main loop: no handler ever interrupts a tick or a reload
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    engine = Engine(rekey_grace=cfg.engine.rekey_grace, log_interval=cfg.engine.log_interval)
    server = ControlServer(engine, socket_path, config_path=config_path)
    try:
        try:
            engine.apply_config(cfg)
            server.start()
        except (ConfigError, ControlError, OSError) as exc:
            log.error("%s", exc)
            return 1
        log.info("engine running: %d peers, %d policies, %d SAs from %s (pid %d)",
                 len(cfg.peers), len(cfg.policies), len(cfg.sas), config_path, os.getpid())
        serve(engine, server)
        return 0
    finally:
        server.close()
        engine.close()
        log.info("engine stopped; keys wiped")
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _reload_on_signal(server: ControlServer) -> None:
    try:
        server.reload()
    except ConfigError as exc:     # reload() raises nothing else
        log.error("reload failed, keeping the running configuration: %s", exc)


def serve(engine, server: ControlServer, on_tick: Callable[[], None] | None = None) -> None:
    """The main loop of ``ipsp engine`` and ``ipsp gateway``, with SIGTERM, SIGINT and
    SIGHUP blocked in every thread: reload on SIGHUP, return on SIGTERM or SIGINT, and every
    second engine.tick(), then *on_tick*, then the new events into the log.

    A reload runs in a thread of its own, so however long a file takes to read and apply
    the loop goes on ticking and taking signals: SIGTERM during a reload abandons it (the
    server is closed, which cancels the change; ControlServer.apply) and returns at once.
    SIGHUPs that arrive during a reload are folded into one more reload after it."""
    last_event = 0
    next_tick = time.monotonic() + 1.0
    reloading: threading.Thread | None = None
    again = False
    while True:
        info = signal.sigtimedwait(SIGNALS, max(0.0, min(next_tick - time.monotonic(), 0.2 if again else 1.0)))
        if info is not None and info.si_signo != signal.SIGHUP:
            log.info("stopping on %s", signal.Signals(info.si_signo).name)
            if reloading is not None and reloading.is_alive():
                log.info("abandoning the reload in progress")
            server._stopping.set()
            return
        if info is not None:
            again = True
        if again and (reloading is None or not reloading.is_alive()):
            again = False
            reloading = threading.Thread(target=_reload_on_signal, args=(server,), name="ipsp-reload", daemon=True)
            reloading.start()
        if time.monotonic() >= next_tick:
            next_tick = time.monotonic() + 1.0
            try:
                engine.tick()
                if on_tick is not None:
                    on_tick()
            except Exception:
                log.exception("tick failed")
            for event in engine.events(last_event):      # expiries, acquires, mappings
                last_event = event["id"]
                log.info("event: %s", event["text"])
