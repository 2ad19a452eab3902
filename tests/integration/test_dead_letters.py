"""Looking at parked messages never changes them; dropping removes only what is chosen;
a replay keeps the first parked-at time. Against the real broker (a quorum queue, which
counts every redelivery)."""

from __future__ import annotations

from typing import Any

import aio_pika

from tests.harness import Harness, sample
from worker.messaging.headers import DELIVERY_COUNT_HEADER, PARKED_AT_HEADER
from worker.messaging.topology import Names
from worker.ops import dead_letters
from worker.ops.settings import Settings


async def park_invalid(harness: Harness, count: int) -> list[str]:
    harness.read_parked = False
    cids = []
    for _ in range(count):
        bad = sample("01-dbs-booked.json")
        bad["patient"]["nhs_number"] = "9990010006"  # fails the check digit: REJECTED, parked
        cids.append(await harness.publish(bad))
    await harness.wait_for_parked(count)
    return cids


async def raw_parked(settings: Settings) -> list[tuple[str | None, bytes, dict[str, Any]]]:
    """Every parked message as the broker holds it, taken and handed back once, at the end."""
    names = Names(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    found = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(names.dead_letter_queue)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            found.append((message.message_id, message.body, dict(message.headers or {})))
    return found


async def test_twenty_looks_leave_the_parked_messages_unchanged(
    harness: Harness, settings: Settings
) -> None:
    await park_invalid(harness, 3)
    before = await dead_letters.look(settings)

    for _ in range(20):
        page = await dead_letters.look(settings)
        assert [p.message_id for p in page.parked] == [p.message_id for p in before.parked]
    shown = await dead_letters.show(settings, before.parked[1].message_id)

    assert shown is not None and shown[0].message_id == before.parked[1].message_id
    after = await dead_letters.look(settings)
    assert after.total == 3
    assert [p.summary() | {"age_seconds": 0} for p in after.parked] == [
        p.summary() | {"age_seconds": 0} for p in before.parked
    ]
    assert [p.headers for p in after.parked] == [p.headers for p in before.parked]
    # As the broker holds them: no redelivery counted, order kept.
    held = await raw_parked(settings)
    assert [m[0] for m in held] == [p.message_id for p in before.parked]
    # (A quorum queue says 0 on a first delivery; each redelivery would count one up.)
    assert all(headers.get(DELIVERY_COUNT_HEADER) in (None, 0) for _, _, headers in held)


async def test_a_list_pages_and_says_where_it_stopped(harness: Harness, settings: Settings) -> None:
    await park_invalid(harness, 5)

    first = await dead_letters.look(settings, limit=2)
    second = await dead_letters.look(settings, offset=2, limit=2)
    last = await dead_letters.look(settings, offset=4, limit=2)

    assert (first.total, len(first.parked), len(second.parked), len(last.parked)) == (5, 2, 2, 1)
    ids = [p.message_id for page in (first, second, last) for p in page.parked]
    assert len(set(ids)) == 5
    assert (await dead_letters.look(settings)).total == 5  # nothing lost by paging


async def test_drop_removes_only_the_chosen_ones(harness: Harness, settings: Settings) -> None:
    await park_invalid(harness, 3)
    page = await dead_letters.look(settings)
    chosen = page.parked[0].message_id

    dropped = await dead_letters.drop(settings, {chosen, "no-such-message"})

    assert dropped == [chosen]
    left = await dead_letters.look(settings)
    assert [p.message_id for p in left.parked] == [p.message_id for p in page.parked[1:]]


async def test_a_replayed_message_parked_again_keeps_its_first_parked_at(
    harness: Harness, settings: Settings
) -> None:
    await park_invalid(harness, 1)
    (first,) = (await dead_letters.look(settings)).parked

    assert await dead_letters.replay(settings, {first.message_id}, token=None, reopen=False) == [
        first.message_id
    ]
    await harness.wait_for_parked(1)  # rejected again, parked again
    page = await dead_letters.look(settings)

    (again,) = page.parked
    assert again.headers[PARKED_AT_HEADER] == first.headers[PARKED_AT_HEADER]
    assert "x-ers-replayed-at" in again.headers
