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

import dataclasses
import enum
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import socketserver
import stat
import threading
import time
from typing import Any, Callable

from ipsp.config import Config, ManualSA, config_from_document, load_config
from ipsp.errors import ConfigError, IpsecError
from ipsp.spd import ANY, Policy

__all__ = ["ControlServer", "ControlClient", "ControlError", "MAX_LINE", "plain", "policy_row",
           "manual_sa_row", "peer_row", "run_engine", "serve", "SIGNALS"]

log = logging.getLogger("ipsp.control")

MAX_LINE = 1 << 20                 # a request line longer than this is refused
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


def _param(params: dict, name: str, kind: type, default: Any = ..., *, spi: bool = False) -> Any:
    if name not in params:
        if default is ...:
            raise ConfigError(f"missing parameter {name!r}")
        return default
    value = params[name]
    if spi and isinstance(value, str):        # SPIs as the tables show them: "0x00001001"
        try:
            value = int(value, 0)
        except ValueError:
            raise ConfigError(f"parameter {name!r} must be an integer or '0x...', got {value!r}") from None
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"parameter {name!r} must be {_TYPES[kind]}, got {json.dumps(value)[:40]}")
    return value


def _only(params: dict, *names: str) -> None:
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}")


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

    def __init__(self, engine, path: str | os.PathLike[str], *, config_path: str | os.PathLike[str] | None = None):
        self.engine = engine
        self.path = os.fspath(path)
        self.config_path = None if config_path is None else os.fspath(config_path)
        self._server: socketserver.UnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._ops: dict[str, Callable[[dict], Any]] = {
            "sa_list": self._sa_list, "sa_add": self._sa_add, "sa_del": self._sa_del,
            "policy_list": self._policy_list, "policy_add": self._policy_add, "policy_del": self._policy_del,
            "stats": self._stats, "prometheus": self._prometheus, "events": self._events, "reload": self._reload,
        }

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "ControlServer":
        self._clear_path()
        server = _Server(self)
        # bind under a umask so the socket is never, even briefly, open to others (a chmod
        # after bind alone leaves a window); the umask is process-wide: restored at once
        old = os.umask(0o177)
        try:
            server.server_bind()
        except BaseException:
            server.server_close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="ipsp-control", daemon=True)
        self._thread.start()
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
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)       # nobody listens: a stale socket file
            return
        finally:
            probe.close()
        raise ControlError(f"an engine already answers on {self.path}")

    def close(self) -> None:
        """Stop serving, drop open connections and remove the socket (if it is still ours)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
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
        """One request line to one response object; never raises."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"not a JSON request: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": 'a request is a JSON object with an "op" string'}
        op = request.pop("op")
        handler = self._ops.get(op)
        if handler is None:
            return {"ok": False, "error": f"unknown op {op[:40]!r} (known: {', '.join(self._ops)})"}
        try:
            return {"ok": True, "result": plain(handler(request))}
        except ConfigError as exc:         # "dport: port range 2000-1000 must ..."
            return {"ok": False, "error": str(exc)}
        except KeyError as exc:            # "no outbound SA with SPI 0x1001 to ..."
            return {"ok": False, "error": str(exc.args[0] if exc.args else exc)}
        except Exception:
            # the message could say anything; the log has the traceback, the client a pointer
            log.exception("control op %s failed", op)
            return {"ok": False, "error": f"{op}: internal error (see the engine's log)"}

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
        spi = _param(params, "spi", int, spi=True)
        dst = _address(_param(params, "dst", str), "dst")
        direction = _param(params, "direction", str)
        if direction not in ("in", "out"):
            raise ConfigError(f"parameter 'direction' must be 'in' or 'out', got {direction!r}")
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
        return self.engine.counters()

    def _prometheus(self, params: dict) -> str:
        _only(params)
        return self.engine.prometheus()

    def _events(self, params: dict) -> list[dict]:
        _only(params, "since")
        return self.engine.events(_param(params, "since", int, 0))

    def _reload(self, params: dict) -> dict:
        _only(params, "path")
        return self.reload(_param(params, "path", str, None))

    def reload(self, path: str | None = None) -> dict:
        """Apply the configuration file at *path* (default: the server's); all or nothing:
        a file that does not load, or does not fit the running engine, changes nothing."""
        path = path or self.config_path
        if path is None:
            raise ConfigError("no configuration file: the server was started without one; give a path")
        cfg = load_config(path)
        self.apply(cfg)
        # the socket itself stays where it is
        if cfg.engine.control_socket and os.path.abspath(cfg.engine.control_socket) != os.path.abspath(self.path):
            log.warning("control_socket changed to %s: it takes effect on restart", cfg.engine.control_socket)
        summary = {"path": os.fspath(path), "peers": len(cfg.peers), "policies": len(cfg.policies),
                   "sas": len(cfg.sas)}
        log.info("loaded %(path)s: %(peers)d peers, %(policies)d policies, %(sas)d SAs", summary)
        return summary

    def apply(self, cfg: Config) -> None:
        """Install a loaded configuration, all or nothing (a subclass adds its own part)."""
        self.engine.apply_config(cfg)


def _address(value: str, name: str):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"parameter {name!r}: {value!r} is not an IPv4 or IPv6 address") from None


def _installed(km, m: ManualSA) -> bool:
    for sa in km.sad:
        if (sa.direction == m.direction and sa.spi == m.config.spi and sa.dst == m.config.dst
                and (m.direction == "out" or sa.group_source == m.group_source)):
            return True
    return False


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, control: ControlServer):
        self.control = control
        super().__init__(control.path, _Handler, bind_and_activate=False)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        control: ControlServer = self.server.control
        with control._conns_lock:
            control._conns.add(self.connection)
        try:
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self._send({"ok": False, "error": f"request line longer than {MAX_LINE} bytes"})
                    while line and not line.endswith(b"\n"):     # skip the rest of it
                        line = self.rfile.readline(MAX_LINE)
                    continue
                if not line.strip():
                    continue
                self._send(control.handle(line))
        except OSError:
            return                          # the client went away
        finally:
            with control._conns_lock:
                control._conns.discard(self.connection)

    def _send(self, response: dict) -> None:
        self.wfile.write(json.dumps(response).encode() + b"\n")


# -- the client ---------------------------------------------------------------------------------

class ControlClient:
    """Calls ops on the engine at *path*; one connection per call."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5):
        self.path = os.fspath(path)
        self.timeout = timeout

    def call(self, op: str, **params: Any) -> Any:
        # default=str: a TOML date in an SA file arrives as a string the engine refuses by name
        request = json.dumps({**params, "op": op}, default=str).encode() + b"\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(self.path)
            except FileNotFoundError:
                raise ControlError(f"no engine at {self.path}: the socket does not exist "
                                   "(is `ipsp engine` running?)") from None
            except ConnectionRefusedError:
                raise ControlError(f"nothing listens at {self.path} "
                                   "(a stale socket: is `ipsp engine` running?)") from None
            except PermissionError:
                raise ControlError(f"permission denied connecting to {self.path} "
                                   "(the socket is for the engine's user only)") from None
            except OSError as exc:
                raise ControlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
            sock.sendall(request)
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


# -- ipsp engine --------------------------------------------------------------------------------

def load_for_serving(config_path: str, socket_path: str | None) -> tuple[Config, str] | int:
    """The configuration and control socket path of ``ipsp engine`` and ``ipsp gateway``, or
    the exit status when there are none (1: a bad file; 2: no socket given anywhere)."""
    try:
        cfg = load_config(config_path)
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


def serve(engine, server: ControlServer, on_tick: Callable[[], None] | None = None) -> None:
    """The main loop of ``ipsp engine`` and ``ipsp gateway``, with SIGTERM, SIGINT and
    SIGHUP blocked in every thread: reload on SIGHUP, return on SIGTERM or SIGINT, and every
    second engine.tick(), then *on_tick*, then the new events into the log."""
    last_event = 0
    next_tick = time.monotonic() + 1.0
    while True:
        info = signal.sigtimedwait(SIGNALS, max(0.0, next_tick - time.monotonic()))
        if info is not None and info.si_signo != signal.SIGHUP:
            log.info("stopping on %s", signal.Signals(info.si_signo).name)
            return
        if info is not None:
            try:
                server.reload()
            except ConfigError as exc:
                log.error("reload failed, keeping the running configuration: %s", exc)
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
