"""Text from outside (etcd, events, verdicts, capture files) made safe to print on a terminal.

A registration, a verdict's reason or an alert's family is written by whoever can write
to etcd or send an event; printed as is, an ESC sequence in it drives the operator's
terminal (set its title, clear the screen, move the cursor, rewrite what an earlier line
said, on some terminals answer back into the shell), and a newline or carriage return
forges lines of the table around it. :func:`printable` shows every such character as a
visible escape instead, the way ``repr`` would, so the text is still readable and the
operator sees that something odd was sent:

    >>> printable("evil\\x1b]0;pwned\\x07\\n")
    'evil\\\\x1b]0;pwned\\\\x07\\\\n'

Escaped: C0 and C1 control characters and DEL (category Cc, which holds ESC, BEL, CR,
LF, TAB and the 8-bit CSI), format characters (Cf: the bidirectional overrides that
reorder what is shown, zero-width characters), line and paragraph separators (Zl, Zp) and
lone surrogates (Cs, from undecodable bytes). Everything else, other scripts included,
is printed as is. Use it on each field that came from outside, at the print, not on the
line a command composed (whose own newlines are wanted); ``keep_newlines`` is for a
multi-line text composed elsewhere, where only the terminal controls can still go.
:class:`PrintableFormatter` does the same for log lines (file names, etcd keys and peer
ids reach log messages): each message is one line, a traceback keeps its line breaks.
"""

from __future__ import annotations

import logging
import unicodedata
from functools import lru_cache

__all__ = ["PrintableFormatter", "printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


@lru_cache(maxsize=4096)
def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` with every character that could drive a terminal shown as an escape
    (see the module docstring); ``keep_newlines`` leaves "\\n" as a line break."""
    s = str(text)
    if s.isprintable():  # the common case: nothing to do
        return s
    if keep_newlines:
        return "\n".join(printable(part) for part in s.split("\n"))
    return "".join(_escape(ch) for ch in s)


class PrintableFormatter(logging.Formatter):
    """A log formatter whose lines cannot carry terminal controls or forged lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: object) -> str:
        return printable(super().formatException(ei), keep_newlines=True)  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep_newlines=True)
