"""Errors meant for the person running autotune, not for a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: printed as a short message, exit status 2.

    The message should say what is wrong and how to fix it, in a sentence or two.
    """
