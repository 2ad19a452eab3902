"""The sandbox's application-wide rate limit: beyond it, 429 with the spec's body and a
Retry-After, as e-RS answers; strict over any 1-second window."""

from __future__ import annotations

import httpx

from sandbox.budget import Budget
from sandbox.testing import SandboxAdmin
from tests.integration.sandbox.flows import RC, error_code, ers_headers


async def test_beyond_the_budget_e_rs_answers_429_with_retry_after(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.set_budget(3)

    answers = [
        await ers.get("/STU3/CodeSystem/PRIORITY", headers=ers_headers(RC)) for _ in range(5)
    ]

    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    refused = answers[3]
    assert error_code(refused) == "TOO_MANY_REQUESTS"
    assert refused.headers["Retry-After"] == "1"
    assert (await admin.budget()) == {"per_second": 3, "refused": 2}
    log = await admin.requests()
    assert [entry["status"] for entry in log][-2:] == [429, 429]


async def test_a_reset_lifts_a_budget_set_for_a_test(
    ers: httpx.AsyncClient, admin: SandboxAdmin
) -> None:
    await admin.set_budget(1)
    await admin.reset()

    answers = [
        await ers.get("/STU3/CodeSystem/PRIORITY", headers=ers_headers(RC)) for _ in range(3)
    ]

    assert [a.status_code for a in answers] == [200, 200, 200]


def test_the_window_slides_and_never_holds_more_than_the_budget() -> None:
    now = [100.0]
    budget = Budget(2, clock=lambda: now[0])

    assert budget.admit() is None and budget.admit() is None
    assert budget.admit() == 1  # a third within the same second
    now[0] = 100.999
    assert budget.admit() == 1
    now[0] = 101.0  # the first two have left the window
    assert budget.admit() is None and budget.admit() is None
    assert budget.admit() is not None
    assert budget.refused == 3
