"""Configuration files (TOML): the only place ipsp parses configuration.

An SA file holds ``[[sa]]`` tables (see the README for the keys) and optionally a top-level
``allow_insecure = true`` that admits the legacy transforms (DES, HMAC-MD5). Loading is all
or nothing: the first error raises ConfigError naming the file and the key path.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any, Mapping

from ipsp.errors import ConfigError
from ipsp.sa import SAConfig, sa_from_mapping

__all__ = ["load_sa_file", "sas_from_document"]


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(path)) from None


def sas_from_document(doc: Mapping[str, Any], *, path: str | None = None,
                      env: Mapping[str, str] | None = None) -> list[SAConfig]:
    """SAConfigs from a parsed document's ``[[sa]]`` array; checks that SPIs are unique per
    destination (the inbound lookup key, RFC 4301 4.1)."""
    unknown = sorted(set(doc) - {"sa", "allow_insecure"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(unknown)}", path=path)
    allow = doc.get("allow_insecure", False)
    if not isinstance(allow, bool):
        raise ConfigError("expected true or false", path=path, key="allow_insecure")
    entries = doc.get("sa")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("no SAs: expected one or more [[sa]] tables", path=path, key="sa")
    sas: list[SAConfig] = []
    seen: dict[tuple[int, bytes], int] = {}
    for i, entry in enumerate(entries):
        try:
            sa = sa_from_mapping(entry, key=f"sa[{i}]", allow_insecure=allow, env=env)
        except ConfigError as exc:
            raise ConfigError(exc.message, path=path, key=exc.key) from None
        lookup = (sa.spi, sa.dst.packed)
        if lookup in seen:
            raise ConfigError(f"SPI {sa.spi:#x} to {sa.dst} is already used by sa[{seen[lookup]}]",
                              path=path, key=f"sa[{i}].spi")
        seen[lookup] = i
        sas.append(sa)
    return sas


def load_sa_file(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> list[SAConfig]:
    """The SAs of a TOML file, validated; raises ConfigError naming file and key path."""
    return sas_from_document(_read_toml(path), path=str(path), env=env)
