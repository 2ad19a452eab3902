"""deploy/worker.env.example lists every setting, with the default the code has."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.ops.settings import Settings, env_example
from worker.saga.working_days import HolidayRegion

ENV_EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "worker.env.example"


def test_env_example_lists_every_setting_with_its_default() -> None:
    assert ENV_EXAMPLE.read_text() == env_example(), (
        "run `ers-worker env > deploy/worker.env.example`"
    )


def test_environment_configures_the_worker(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ERS_BASE_URL", "http://127.0.0.1:9/referrals/FHIR")
    monkeypatch.setenv("WORKER_CONCURRENCY", "7")
    monkeypatch.setenv("ERS_TRIAGE_ROUTE", "A011_A016")
    settings = Settings()
    assert settings.concurrency == 7
    assert settings.code_system_base_url == "http://127.0.0.1:9/referrals/FHIR"
    assert settings.ers_triage_route.value == "A011_A016"


def test_bank_holidays_default_to_england_and_wales_and_can_be_switched(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert Settings().bank_holiday_region is HolidayRegion.ENGLAND_AND_WALES
    monkeypatch.setenv("BANK_HOLIDAY_REGION", "none")
    assert Settings().bank_holiday_region is HolidayRegion.NONE
    monkeypatch.setenv("BANK_HOLIDAY_REGION", "wales")
    with pytest.raises(ValidationError, match="BANK_HOLIDAY_REGION"):
        Settings()


def test_letters_are_kept_30_days_unless_set(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert Settings().letters_retention_days == 30
    monkeypatch.setenv("LETTERS_RETENTION_DAYS", "0")
    assert Settings().letters_retention_days == 0
    monkeypatch.setenv("LETTERS_RETENTION_DAYS", "-1")
    with pytest.raises(ValidationError, match="LETTERS_RETENTION_DAYS"):
        Settings()
