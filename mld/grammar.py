"""The grammar of ``mld``, ``mld COMPONENT ACTION [ARGS]``, and the old spellings it replaced.

Every component (a package and its mld.yaml section) is a command whose actions are
subcommands; the long-running action of a service is ``run``. A few commands belong to
no component and stay at the top: ``version``, ``status`` (every service at once) and
``etcd`` (the control plane's server, with its own actions). docs/CLI.md has the table.

The spellings of the previous release (``mld sniff``, ``mld rag --ask``, ``mld watch DIR``,
...) still work for one release: :func:`resolve` rewrites such a command line into the
new one before argparse sees it, so an old spelling runs exactly the code of the new one,
and :attr:`Alias.note` is the one line ``mld`` prints about it on stderr. The old
spellings are not subcommands of the parser, so ``mld --help`` does not list them; its
epilog names the renames (:func:`renames`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["ALIASES", "Alias", "command_word", "renames", "resolve", "value_options", "walk"]

_HELP = ("-h", "--help")
# The options every command takes that have a value (mld.cli common), and the old `rag --ask`.
_COMMON_VALUES = frozenset({"--config", "--ask"})


@dataclass(frozen=True)
class Alias:
    """One old spelling, what replaced it, and an old command line that uses it."""

    old: str
    new: str
    example: tuple[str, ...]

    @property
    def note(self) -> str:
        return f"mld: 'mld {self.old}' is deprecated, use 'mld {self.new}'"


ALIASES: tuple[Alias, ...] = (
    Alias("sniff", "sniffer run", ("sniff", "--iface", "eth0")),
    Alias("flows", "sniffer flows", ("flows", "capture.pcap")),
    Alias("detect", "detector run", ("detect",)),
    Alias("analyze", "detector analyze", ("analyze", "capture.pcap")),
    Alias("train", "detector train", ("train", "--out", "bundle")),
    Alias("evaluate", "detector evaluate", ("evaluate", "labels.csv")),
    Alias("keygen --out", "keys new", ("keygen", "--out", "node.key")),
    Alias("keygen --show", "keys show", ("keygen", "--show", "node.key")),
    Alias("rag", "rag console", ("rag", "--no-model")),
    Alias("rag --ask", "rag ask", ("rag", "--ask", "which address scanned the server?")),
    Alias("rag serve", "rag run", ("rag", "serve")),
    Alias("anomaly serve", "anomaly run", ("anomaly", "serve")),
    Alias("watch DIR", "watch run DIR", ("watch", "/var/captures")),
    Alias("gateway --outside", "gateway run --outside", ("gateway", "--outside", "eth0")),
)
_BY_OLD = {a.old: a for a in ALIASES}
# One-word commands that became COMPONENT ACTION, with nothing else to move.
_RENAMED = {a.old: tuple(a.new.split()) for a in ALIASES[:6]}


def walk(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of the parser (itself first) with the words that reach it."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*words, name))


def value_options(parser: argparse.ArgumentParser) -> frozenset[str]:
    """The options that take a value anywhere in the parser, plus the old ``rag --ask``."""
    found = {"--ask"}
    for _words, p in walk(parser):
        for action in p._actions:
            if action.option_strings and action.nargs != 0:
                found.update(action.option_strings)
    return frozenset(found)


def _first_word(args: Sequence[str], takes_value: frozenset[str]) -> int | None:
    """Index of the first word of args that is neither an option nor an option's value."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg.startswith("-") and arg != "-":
            skip = arg in takes_value
        else:
            return i
    return None


def resolve(argv: Sequence[str], takes_value: frozenset[str]) -> tuple[list[str], Alias | None]:
    """The command line in the new grammar, and the alias it used (None if none).

    ``takes_value`` is :func:`value_options` of the parser, to tell an option's value from
    a command word.
    """
    args = list(argv)
    at = _first_word(args, takes_value)
    if at is None:
        return args, None
    word, rest = args[at], args[at + 1 :]
    head = args[:at]
    sub = _first_word(rest, takes_value)
    if word in _RENAMED:
        return [*head, *_RENAMED[word], *rest], _BY_OLD[word]
    if word == "keygen":
        show = any(a == "--show" or a.startswith("--show=") for a in rest)
        moved = []
        for arg in rest:
            if arg in ("--out", "--show"):
                continue
            moved.append(arg.split("=", 1)[1] if arg.startswith(("--out=", "--show=")) else arg)
        alias = _BY_OLD["keygen --show" if show else "keygen --out"]
        return [*head, *alias.new.split(), *moved], alias
    if word in ("anomaly", "rag") and sub is not None and rest[sub] == "serve":
        rest[sub] = "run"
        return [*head, word, *rest], _BY_OLD[f"{word} serve"]
    if word == "rag" and sub is None:
        for i, arg in enumerate(rest):
            if arg == "--ask" and i + 1 < len(rest):
                question = rest[i + 1]
                rest = rest[:i] + rest[i + 2 :]
                return [*head, "rag", "ask", question, *rest], _BY_OLD["rag --ask"]
            if arg.startswith("--ask="):
                rest = rest[:i] + rest[i + 1 :]
                return [*head, "rag", "ask", arg[6:], *rest], _BY_OLD["rag --ask"]
        if not rest or not all(a in _HELP for a in rest):  # `mld rag --help`: the group's
            return [*head, "rag", "console", *rest], _BY_OLD["rag"]
    old_form = rest and rest[0] not in _HELP and (sub is None or rest[sub] != "run")
    if word in ("watch", "gateway") and old_form:
        alias = _BY_OLD["watch DIR" if word == "watch" else "gateway --outside"]
        return [*head, word, "run", *rest], alias
    return args, None


def renames() -> str:
    """The renames, for the epilog of ``mld --help``."""
    lines = ["renamed in this release (the old spelling still works, with a note on stderr):"]
    for alias in ALIASES:
        lines.append(f"  mld {alias.old:22} -> mld {alias.new}")
    return "\n".join(lines) + "\n"


def command_word(argv: Sequence[str]) -> str | None:
    """The command (first word) the command line runs once :func:`resolve` has rewritten an
    old spelling (``analyze`` -> ``detector``), or None (``mld``, ``mld --help``). Only the
    options common to every command come before it, so their value options suffice."""
    return command_action(argv)[0]


# Offline commands whose work is all per batch in native code and NumPy with no BLAS call:
# OpenBLAS's worker threads (one per other core) only spin there (~70 ms of CPU at start-up
# alone, more after any small BLAS call), so mld/__init__.py holds OpenBLAS to one thread
# for them. Not the services, nor `mld rag` / `mld watch` (FAISS reads the same setting).
SINGLE_BLAS_THREAD = frozenset({("detector", "analyze"), ("sniffer", "flows")})


def command_action(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """The command and its action (``detector``, ``analyze``), after :func:`resolve`; None
    for what is not given. Options between them are skipped (only the common ones, whose
    value options are known here, may stand there)."""
    words, _alias = resolve(argv, _COMMON_VALUES)
    at = _first_word(words, _COMMON_VALUES)
    if at is None:
        return None, None
    rest = words[at + 1 :]
    nxt = _first_word(rest, _COMMON_VALUES)
    return words[at], rest[nxt] if nxt is not None else None
