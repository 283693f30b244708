"""One problem, two texts: plain words for the page, and the details for the person running
the server.

A visitor reads ``visitor``: no environment variable, file, shell command, exception class or
server path. The server log and the page's one closed "For the person running this server"
accordion get ``operator``: which variable, which file, which command. No gradio here: the
core raises or returns these, the UI decides where each text goes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"():,;]+){2,}")  # a path of two parts or more


@dataclass(frozen=True)
class Notice:
    visitor: str  # for the page
    operator: str  # for the server log and the operator's accordion


class Explained(Exception):
    """An exception whose message (``str(exc)``) is the operator's detail, with the visitor's
    words beside it in ``visitor`` (the message itself when it names nothing of the server)."""

    def __init__(self, operator: str, visitor: str = ""):
        super().__init__(operator)
        self.visitor = visitor or operator

    @property
    def notice(self) -> Notice:
        return Notice(self.visitor, str(self))


def without_paths(text: str) -> str:
    """``text`` with every file path of this machine cut to its last part."""
    return _PATH.sub(lambda m: re.split(r"[/\\]", m.group(0))[-1], text)


def notice_of(exc: BaseException, bug: str) -> Notice:
    """What to say about ``exc``: an ``Explained`` says it itself; a ``ValueError`` is the
    person's mistake, its message written for them (any server path cut to its last part);
    anything else is a bug of ours, ``bug`` for the visitor and the exception for the operator."""
    if isinstance(exc, Explained):
        return exc.notice
    if isinstance(exc, ValueError):
        return Notice(without_paths(str(exc)), str(exc))
    return Notice(bug, f"{type(exc).__name__}: {exc}")
