"""Log lines: libraries' records interpolated, and every one through the privacy filter."""

from __future__ import annotations

import logging

import orjson

from worker.observability.logs import JsonFormatter


def line(name: str, msg: str, *args: object) -> dict[str, object]:
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)
    parsed: dict[str, object] = orjson.loads(JsonFormatter().format(record))
    return parsed


def test_a_library_record_is_interpolated() -> None:
    got = line("aiormq.connection", "error when creating transport: %r", ConnectionError(111))
    assert got["msg"] == "error when creating transport: ConnectionError(111)"


def test_a_library_record_with_an_nhs_number_argument_comes_out_redacted() -> None:
    got = line("aio_pika.message", "body %s for %s", b'{"nhs_number": "9990010005"}', 9990010005)
    assert "9990010005" not in str(got)
    assert got["msg"] == 'body b\'{"nhs_number": "[NHS number]"}\' for [NHS number]'


def test_tokens_credentials_names_and_blobs_are_redacted_from_library_records() -> None:
    secrets = {
        "amqp://guest:s3cret@rabbit:5672/": "s3cret",
        "{'Authorization': 'Bearer test-user-token-0123456789'}": "test-user-token",
        "headers {'x-ers-access-token': 'opaque-token-xyz'}": "opaque-token-xyz",
        '{"name": [{"family": "SMITH", "given": ["Jane"]}]}': "SMITH",
        '{"given": ["Jane"], "prefix": ["Mrs"]}': "Jane",
        "eyJhbGciOiJSUzUxMiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl": "eyJzdWIiOiIxMjMifQ",
        "content " + "QUJD" * 40: "QUJD" * 20,
    }
    for text, secret in secrets.items():
        got = line("httpcore.http11", "sent %s", text)
        assert secret not in str(got["msg"]), text
        assert str(got["msg"]).startswith("sent ")


def test_a_preformatted_library_message_is_filtered_too() -> None:
    got = line("aio_pika.robust_connection", "Connection to amqp://u:pw@h/ for 9990010005 lost")
    assert got["msg"] == "Connection to amqp://[credentials]@h/ for [NHS number] lost"


def test_arguments_that_do_not_fit_still_give_a_line() -> None:
    got = line("somelib", "%d items", "many")
    assert got["msg"] == "%d items (arguments did not fit)"


def test_the_workers_own_constants_are_written_as_they_are() -> None:
    assert line("worker.messaging.consumer", "step ended")["msg"] == "step ended"
