"""Errors torch-bam raises for bad input from a user.

:class:`UsageError` is a ``ValueError`` whose message names the cause and the fix. The
``torch-bam`` command prints it as one line (``torch-bam <command>: <message>``) and exits
with status 2, without a traceback; Python callers can catch it as a ``ValueError``.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Bad input from a user: the message says what is wrong and how to fix it."""
