"""ERS_TOKEN_PROVIDER=message-id-token through the broker and the sandbox as the API platform:
the worker exchanges the CIS2 ID token from x-ers-id-token, and re-exchanges when e-RS stops
taking the access token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.testing import SandboxHandle
from tests.harness import Harness, sample
from tests.platform import API_KEY, KID, admin, id_token, jwks_of, key_dir, register
from worker.messaging.headers import ID_TOKEN_HEADER
from worker.ops.settings import Settings


@pytest.fixture
async def platform(sandbox: SandboxHandle, tmp_path: Path) -> AsyncIterator[Path]:
    keys = key_dir(tmp_path)
    await admin(sandbox.root_url, "POST", "oauth/reset")
    await register(sandbox.root_url, jwks_of(keys))
    yield keys
    await admin(sandbox.root_url, "POST", "oauth/reset")


@pytest.fixture
def settings(settings: Settings, platform: Path) -> Settings:
    return settings.model_copy(
        update={
            "ers_token_provider": "message-id-token",
            "apim_api_key": API_KEY,
            "apim_key_id": KID,
            "apim_private_key_dir": platform,
        }
    )


async def test_a_full_saga_in_message_id_token_mode(
    harness: Harness, sandbox: SandboxHandle
) -> None:
    request = sample("01-dbs-booked.json")
    subject = await id_token(sandbox.root_url)

    cid = await harness.publish(request, token=None, headers={ID_TOKEN_HEADER: subject})
    outcome = await harness.outcome(cid)
    await harness.settle()

    assert outcome["status"] == "COMPLETED", outcome["error"]
    exchanges = (await admin(sandbox.root_url, "GET", "oauth/exchanges"))["exchanges"]
    assert [e["status"] for e in exchanges] == [200]  # one exchange, cached for the saga
    assert subject not in str(outcome)


async def test_an_expired_id_token_ends_reauthentication_needed(
    harness: Harness, sandbox: SandboxHandle
) -> None:
    subject = await id_token(sandbox.root_url, lifetime_seconds=-5)

    cid = await harness.publish(
        sample("01-dbs-booked.json"), token=None, headers={ID_TOKEN_HEADER: subject}
    )
    outcome = await harness.outcome(cid)

    assert outcome["status"] == "REAUTHENTICATION_NEEDED"
    assert outcome["error"]["code"] == "ID_TOKEN_EXPIRED"
    assert await harness.sandbox.referrals() == [] or all(
        r["nhs_number"] != sample("01-dbs-booked.json")["patient"]["nhs_number"]
        for r in await harness.sandbox.referrals()
    )
