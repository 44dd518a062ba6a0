"""Which category names a call may carry: a tidy identifier, else ``other``.

The rule lives at the bottom of the one-way street because every layer applies it: ``spendwatch.category`` and the
web middleware clean what they are given, and the exporter's settings refuse configured categories no call can have.
"""

from __future__ import annotations

import re

__all__ = ["OTHER", "VALID_CATEGORY", "clean_category", "is_valid_category"]

OTHER = "other"
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")
# How the rule reads in an error message about a configured category.
VALID_CATEGORY = "up to 64 of A-Z a-z 0-9 _ . : / -, starting with a letter or digit"


def is_valid_category(name: object) -> bool:
    """True when ``name`` is a tidy identifier that :func:`clean_category` keeps as it is."""
    return isinstance(name, str) and _VALID.fullmatch(name) is not None


def clean_category(name: object) -> str:
    """The category as given when it is a tidy identifier (≤ 64 of ``A-Z a-z 0-9 _ . : / -``), else ``other``."""
    return name if is_valid_category(name) else OTHER
