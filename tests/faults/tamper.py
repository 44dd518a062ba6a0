"""Tampering with a round's ledger, each kind of change then checked by ``spendwatch audit verify``."""

from __future__ import annotations


def tamper_and_verify(round_, kinds: list[str]) -> dict[str, bool]:
    return {}
