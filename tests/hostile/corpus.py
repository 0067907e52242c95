"""Hostile and mistaken input, shared by every entry point's test in tests/hostile/.

Each generator yields (name, value) pairs, so a failing case names itself in the test id. The
values are what a fuzzer, an attacker or a tired operator produces: nesting deep enough to
exhaust a recursive parser, numbers past every machine width, NULs and non-ASCII where a path
or a name goes, the wrong type in every field, and sizes no real input has. An entry point
passes when each value is refused with its own named error (or status and counter) and
nothing it already held has changed.
"""

from __future__ import annotations

import sys

# far past CPython's default recursion limit, yet small enough to build in a few ms
DEPTH = 100_000


def deep_toml(key: str = "a", depth: int = DEPTH) -> str:
    """A TOML document whose value nests `depth` arrays (tomllib recurses per level)."""
    return f"{key} = " + "[" * depth + "]" * depth + "\n"


def deep_toml_tables(depth: int = 2_000) -> str:
    """Inline tables nested `depth` deep: the other recursive production of TOML."""
    return "a = " + "{b = " * depth + "1" + "}" * depth + "\n"


def deep_json(depth: int = DEPTH) -> str:
    """A JSON text nested `depth` deep (json.loads raises RecursionError, not ValueError)."""
    return "[" * depth + "]" * depth


def deep_json_object(depth: int = DEPTH) -> str:
    return '{"a":' * depth + "1" + "}" * depth


HUGE_INTEGERS = [
    ("2**31", 2**31), ("2**32", 2**32), ("2**63", 2**63), ("2**64", 2**64), ("2**200", 2**200),
    ("-1", -1), ("-2**63", -(2**63)), ("-2**200", -(2**200)),
]

# int() of a decimal string past sys.int_info.str_digits_check_threshold raises ValueError in
# 3.11+; a parser must turn that into its own error too
LONG_DIGITS = "9" * (sys.int_info.default_max_str_digits + 1)

STRINGS = [
    ("empty", ""),
    ("nul", "a\0b"),
    ("nul-only", "\0"),
    ("newline", "a\nb"),
    ("non-ascii", "ünïcødé"),
    ("non-ascii-15", "é" * 15),          # 15 characters, 30 bytes: fits IFNAMSIZ by count only
    ("rtl-override", "a\u202eb"),
    ("surrogate", "\udcff"),
    ("long", "x" * 100_000),
    ("hex-key", "0x" + "11" * 32),       # key material where a name belongs: must not be echoed
]

WRONG_TYPES = [
    ("none", None), ("true", True), ("int", 7), ("float", 1.5), ("nan", float("nan")),
    ("inf", float("inf")), ("list", [1, 2]), ("dict", {"x": 1}), ("bytes", b"\x00\xff"),
]


def sizes() -> list[tuple[str, int]]:
    """Sizes no real packet, stride or file has, for lengths, offsets and strides."""
    return [("zero", 0), ("minus-one", -1), ("2**31", 2**31), ("2**40", 2**40),
            ("2**62", 2**62), ("2**63-1", 2**63 - 1), ("-2**63", -(2**63))]


def values() -> list[tuple[str, object]]:
    """Every value above, for a field that takes any of them."""
    out: list[tuple[str, object]] = []
    out += [(f"int:{n}", v) for n, v in HUGE_INTEGERS]
    out += [(f"str:{n}", v) for n, v in STRINGS]
    out += [(f"type:{n}", v) for n, v in WRONG_TYPES]
    out.append(("long-digits", LONG_DIGITS))
    return out
