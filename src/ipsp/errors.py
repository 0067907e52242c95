"""Errors raised by ipsp. Packet-level exceptions come from the kernel's one status table
(fastpath.status.STATUS_EXCEPTIONS) and are re-exported here."""

from fastpath.status import (  # noqa: F401  (re-exported)
    STATUS_EXCEPTIONS, BufferTooSmall, CryptoFailure, IntegrityError, MalformedPacket,
    NoDataPacket, PacketError, PacketTooBig, ReplayError, SAClosedError, SequenceExhausted)


class IpsecError(Exception):
    """Base of ipsp's own errors."""


class ConfigError(IpsecError, ValueError):
    """A configuration value or API argument is wrong; nothing was changed.

    ``path`` is the file (if any) and ``key`` the key path inside it, e.g. ``sa[2].enc_key``.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        self.message = message
        self.path = path
        self.key = key
        where = ":".join(p for p in (path, key) if p)
        super().__init__(f"{where}: {message}" if where else message)
