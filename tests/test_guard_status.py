"""Where the guard's worst case rests on an assumption, ``spendwatch status`` and the refusal say so."""

from __future__ import annotations

import json
import time

import pytest

import spendwatch
from spendwatch.instrumentation.pricing import Price
from tests.test_cli_status_report import environment, write_calls  # noqa: F401
from tests.test_cli_status_report import spendwatch as run_spendwatch
from tests.test_guard import a_request, make_guard  # noqa: F401 - fixtures

GUARD = """
enforce = "block"

[budgets.global]
daily_usd = 10

[guard]
max_output_tokens = 3000
unpriced = "upper-bound"
"""


@pytest.fixture
def guarded(environment, tmp_path):  # noqa: F811
    (tmp_path / "spendwatch.toml").write_text(GUARD)
    return environment | {"SPENDWATCH_CONFIG": str(tmp_path / "spendwatch.toml")}


def test_status_says_where_the_guards_bound_is_an_assumption(guarded):
    write_calls(guarded, (time.time(), 0.01, {}), (time.time(), None, {"model": "acme-private"}))

    result = run_spendwatch(guarded, "status")

    assert result.returncode == 0, result.stderr
    _, guard = result.stdout.split("\n\n")
    lines = guard.strip().splitlines()
    assert lines[0].startswith("guard: enforce=block;")
    assert lines[1] == "a call's worst case rests on an assumption where:"
    notes = "\n".join(lines[2:])
    assert "[guard] max_output_tokens = 3000" in notes
    assert "dearest known model of its provider and family" in notes
    assert "  - acme-private (openai) has no price: [guard] unpriced = 'upper-bound'" in lines
    assert "gpt-4o-mini" not in notes  # its maximum output is known: a bound, not an assumption

    document = json.loads(run_spendwatch(guarded, "status", "--json").stdout)
    assert document["guard"]["assumptions"] == [line[4:] for line in lines[2:]]


def test_a_refusal_says_what_its_bound_assumes(make_guard):  # noqa: F811
    guard, _ = make_guard("[guard]\nmax_output_tokens = 2000\n", daily_budget_usd=0.001)
    guard.prices = type(guard.prices)({"acme-finetune": Price("acme-finetune", "overrides", 1e-6, 4e-6, 1e-6)})

    with pytest.raises(spendwatch.BudgetExceededError) as refused:
        guard.admit(a_request("acme-finetune", output=None))

    message = str(refused.value)
    assert "could cost up to $0.0081 (a bound that assumes output up to [guard] max_output_tokens = 2000" in message
    assert refused.value.assumes == refused.value.__reduce__()[1][-1]["assumes"]
