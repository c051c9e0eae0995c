"""One error family for the whole project, so the CLI and the app can turn any of them into one clear line."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class PhospheneError(Exception):
    """Base of every error phosphene raises on purpose (bad input, not a bug)."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """'did you mean ...?' with the closest valid names, or the valid names themselves when none is close."""
    valid = list(dict.fromkeys(str(v) for v in valid))
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(repr(c) for c in close) + "?"
    if len(valid) <= 24:
        return "valid names: " + ", ".join(repr(v) for v in valid)
    return f"{len(valid)} valid names, e.g. " + ", ".join(repr(v) for v in valid[:8]) + ", ..."


class UnknownNameError(PhospheneError, KeyError):
    """A model, layer, area, category or site name that does not exist; the message lists close matches."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; {suggest(name, self.valid)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class CheckpointError(PhospheneError):
    """A weights file that cannot be read safely or does not fit the architecture."""


class ImageError(PhospheneError, ValueError):
    """An image that is unreadable, of an odd mode, or of the wrong shape or range."""


class ConfigError(PhospheneError, ValueError):
    """A configuration value or key that is not valid."""
