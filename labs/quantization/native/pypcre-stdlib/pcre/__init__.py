"""pypcre's ``pcre`` module on Python's :mod:`re`, for environments that install wheels only.

GPTQModel 7.6 and defuser 0.0.28 import ``pcre`` (pypcre 0.6.4, PCRE2 bindings). pypcre is published
only as source that compiles against libpcre2 with a C compiler, which a fresh machine lacks, so the
quantization lab's native environment installs this project in its place (``lab.yaml``
``native.replace``); the lab's container image builds the real pypcre.

What GPTQModel 7.6 and defuser 0.0.28 call (``grep -rho 'pcre\\.[a-z_A-Z]*'`` over their sources):
``compile`` (with ``Flag.CASELESS``, ``Flag.MULTILINE``, ``Flag.DOTALL``), ``escape``, ``split`` and
the ``Pattern`` type; their patterns use no PCRE-only syntax. A flag without an :mod:`re`
equivalent raises ``NotImplementedError`` naming it instead of being ignored.
"""

from __future__ import annotations

import re
from enum import IntFlag
from re import Match, Pattern, error, escape

__all__ = [
    "Flag",
    "Match",
    "Pattern",
    "PcreError",
    "compile",
    "escape",
    "findall",
    "finditer",
    "fullmatch",
    "match",
    "search",
    "split",
    "sub",
    "subn",
]
__version__ = "0.6.4+stdlib"

PcreError = error


class Flag(IntFlag):
    """pypcre's compile flags (PCRE2's values) that have an :mod:`re` equivalent."""

    CASELESS = 0x00000008
    DOTALL = 0x00000020
    EXTENDED = 0x00000080
    MULTILINE = 0x00000400


_TO_RE = {Flag.CASELESS: re.IGNORECASE, Flag.DOTALL: re.DOTALL, Flag.EXTENDED: re.VERBOSE, Flag.MULTILINE: re.MULTILINE}


def to_re_flags(flags: int) -> int:
    """pypcre ``Flag`` bits -> :mod:`re` flags; ``NotImplementedError`` for bits :mod:`re` lacks."""
    out, rest = 0, int(flags)
    for flag, re_flag in _TO_RE.items():
        if rest & flag:
            out |= re_flag
            rest &= ~int(flag)
    if rest:
        raise NotImplementedError(f"pcre flag bits {rest:#x} have no Python re equivalent (pypcre-stdlib)")
    return out


def compile(pattern, flags: int = 0) -> Pattern:  # noqa: A001 (pcre's own name)
    """``re.compile(pattern, <flags translated>)``; a compiled pattern is returned unchanged."""
    if isinstance(pattern, Pattern):
        return pattern
    return re.compile(pattern, to_re_flags(flags))


# The module-level helpers take pcre flags too: translate them (re would read pcre's CASELESS, 0x8,
# as its own MULTILINE).
def search(pattern, string, flags: int = 0):
    return compile(pattern, flags).search(string)


def match(pattern, string, flags: int = 0):
    return compile(pattern, flags).match(string)


def fullmatch(pattern, string, flags: int = 0):
    return compile(pattern, flags).fullmatch(string)


def findall(pattern, string, flags: int = 0):
    return compile(pattern, flags).findall(string)


def finditer(pattern, string, flags: int = 0):
    return compile(pattern, flags).finditer(string)


def split(pattern, string, maxsplit: int = 0, flags: int = 0):
    return compile(pattern, flags).split(string, maxsplit)


def sub(pattern, repl, string, count: int = 0, flags: int = 0):
    return compile(pattern, flags).sub(repl, string, count)


def subn(pattern, repl, string, count: int = 0, flags: int = 0):
    return compile(pattern, flags).subn(repl, string, count)
