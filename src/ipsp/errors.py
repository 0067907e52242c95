"""Errors raised by ipsp. Packet-level exceptions come from the kernel's one status table
(fastpath.status.STATUS_EXCEPTIONS) and are re-exported here.

Configuration errors say what is wrong and where, never a value that could be key material:
a key written into the wrong field (``proposal = "0x..."``, ``enc_key = {env = "0x..."}``) must
not reach stderr, a control-socket reply or a log. Messages show offending values only through
:func:`shown` (or ConfigError's ``got=``), and ConfigError hides any key-like run of hex digits
that reaches a message another way (an exception text of ipaddress, say).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading

from fastpath.status import (  # noqa: F401  (re-exported)
    STATUS_EXCEPTIONS, BufferTooSmall, CryptoFailure, IntegrityError, MalformedPacket,
    NoDataPacket, PacketError, PacketTooBig, ReplayError, SAClosedError, SequenceExhausted)

__all__ = ["IpsecError", "ConfigError", "shown", "redact", "one_line", "bound", "note_once", "notes_on_success",
           "looks_like_key"]

# 16 hex digits are 8 bytes, the shortest key ipsp takes (DES); anything that long and made
# only of hex digits (a 0x prefix, ':' or space separators allowed, as key fields take them)
# could be a key, in whatever field it was written
_KEYLIKE_DIGITS = 16
_TOKEN = re.compile(r"[0-9A-Za-z:]{%d,}" % _KEYLIKE_DIGITS)
_HEX = frozenset("0123456789abcdefABCDEF")
# a key glued to other text ("frobnicate0011...", "aes128gcm16-0011..."): 32 hex digits in a row
# (16 bytes) are no word, name or number a configuration holds
_HEX_RUN = re.compile(r"(?:0[xX])?[0-9a-fA-F]{32,}")
_SHOWN_CHARS = 40            # a value longer than this is shown by its length


def looks_like_key(text: str) -> bool:
    """Whether *text* could be key material: 16 or more hex digits and nothing else."""
    body = text[2:] if text[:2].lower() == "0x" else text
    digits = [c for c in body if c not in ": \t_-"]
    return len(digits) >= _KEYLIKE_DIGITS and all(c in _HEX for c in digits)


def _hide(m: re.Match) -> str:
    token = m.group()
    if not looks_like_key(token):
        return token
    try:
        ipaddress.ip_address(token)          # an IPv6 address written out in full is no key
        return token
    except ValueError:
        return "(hidden: it could be key material)"


def one_line(text: str) -> str:
    """*text* with every control or bidirectional-override character escaped: a newline in a
    file name or in an identity off the network cannot forge a second log or error line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def redact(message: str) -> str:
    """*message* with every key-like run of hex digits replaced by a note, on one line
    (:func:`one_line`)."""
    return one_line(_HEX_RUN.sub("(hidden: it could be key material)", _TOKEN.sub(_hide, message)))


def shown(value: object, width: int = _SHOWN_CHARS) -> str:
    """How an error message shows an offending value: short scalars as written, a key-like
    string or number never, long strings by their length, containers by their type (repr of
    a deeply nested list would itself exhaust the stack)."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        # 15 decimal digits are at most 13 hex ones: no key fits
        return str(value) if abs(value) < 10**15 else f"a {value.bit_length()}-bit integer"
    if isinstance(value, str):
        if looks_like_key(value) or looks_like_key("".join(value.split())) or _HEX_RUN.search(value):
            return f"a hex string of {len(value)} characters (not shown: it could be key material)"
        if len(value) > width:
            return f"a string of {len(value)} characters"
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a value of type {type(value).__name__}"


def bound(n: int) -> str:
    """A range limit as a message writes it: 2**64-1 rather than 20 digits (which would read
    as key material)."""
    for k in (32, 63, 64):
        if n == 2**k - 1:
            return f"2**{k}-1"
        if n == -(2**k):
            return f"-2**{k}"
    return str(n)


_noted: set[str] = set()
_pending = threading.local()


def note_once(message: str, *, key: str | None = None, path: str | None = None) -> None:
    """Log a warning about the configuration (at *path*, *key*) once per process: a reload
    every minute must not repeat it every minute. With no logging set up (``ipsp config
    check``) it reaches stderr. Inside :func:`notes_on_success` it waits for the load to
    succeed, which adds the file's path: a file that fails says one thing, its error."""
    pending = getattr(_pending, "notes", None)
    if pending is not None:
        pending.append((message, key))
        return
    where = ":".join(p for p in (path, key) if p)
    line = redact(f"{where}: {message}" if where else message)
    if line not in _noted:
        _noted.add(line)
        logging.getLogger("ipsp.config").warning("%s", line)


@contextlib.contextmanager
def notes_on_success(path: str | None = None):
    """Hold back :func:`note_once` until the block ends without an exception (nested: the
    outermost block decides, and its *path* names the file)."""
    if getattr(_pending, "notes", None) is not None:
        yield
        return
    _pending.notes = notes = []
    try:
        yield
    finally:
        _pending.notes = None
    for message, key in notes:
        note_once(message, key=key, path=path)


class IpsecError(Exception):
    """Base of ipsp's own errors."""


class ConfigError(IpsecError, ValueError):
    """A configuration value or API argument is wrong; nothing was changed.

    ``path`` is the file (if any) and ``key`` the key path inside it, e.g. ``sa[2].enc_key``.
    ``got``, when given, is the offending value: the message ends ", got ..." through
    :func:`shown`. The message never holds key-like text (:func:`redact`).
    """

    _NO_VALUE = object()

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None,
                 got: object = _NO_VALUE):
        if got is not ConfigError._NO_VALUE:
            message = f"{message}, got {shown(got)}"
        self.message = redact(message)
        self.path = path
        self.key = key
        where = ":".join(redact(p) for p in (path, key) if p)
        super().__init__(f"{where}: {self.message}" if where else self.message)
