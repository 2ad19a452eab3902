"""deploy/worker.env.example lists every setting, with the default the code has."""

import argparse
from enum import Enum
from pathlib import Path
from typing import Literal, get_origin

import pytest
from pydantic import ValidationError

from worker.ops import cli
from worker.ops.failure import OperatorError
from worker.ops.settings import (
    DEFAULT_PATIENT_KEY_SECRET,
    ENV_FILE_ENV,
    ErsEnvironment,
    Settings,
    _one_line,
    env_example,
    load_settings,
)
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


# --- validated at start: one line naming the setting and what it may be -------------------

ENUMERATED = {
    "LOG_LEVEL": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "ERS_ENVIRONMENT": ("sandbox", "integration", "production"),
    "ERS_TRIAGE_ROUTE": ("A021", "A011_A016"),
    "ERS_TOKEN_PROVIDER": ("message-access-token", "message-id-token", "static", "message"),
    "SAGA_STORE": ("sqlite", "postgres"),
    "EVENT_LOOP": ("uvloop", "asyncio"),
    "BANK_HOLIDAY_REGION": ("england-and-wales", "scotland", "northern-ireland", "none"),
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from this process's environment or a worker.env where the tests run."""
    for field in Settings.model_fields.values():
        monkeypatch.delenv(field.validation_alias.choices[0], raising=False)  # type: ignore[union-attr]
    monkeypatch.delenv(ENV_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATIENT_KEY_SECRET", "a-test-secret")


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(OperatorError) as raised:
        load_settings()
    assert raised.value.exit_code == 2
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(ENUMERATED))
def test_a_bad_enumerated_setting_is_refused_naming_it_and_its_values(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    message = refusal(monkeypatch, **{name: "verbose"})
    assert message.startswith(f"invalid settings: {name}: ")
    for allowed in ENUMERATED[name]:
        assert f"'{allowed}'" in message


def test_every_enumerated_setting_is_checked() -> None:
    enumerated = {
        field.validation_alias.choices[0]  # type: ignore[union-attr]
        for field in Settings.model_fields.values()
        if get_origin(field.annotation) is Literal
        or (isinstance(field.annotation, type) and issubclass(field.annotation, Enum))
    }
    assert enumerated == set(ENUMERATED)


def test_log_level_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_a_bad_number_names_the_setting_and_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, AMQP_PREFETCH="0", WORKER_CONCURRENCY="many")
    assert "AMQP_PREFETCH: Input should be greater than or equal to 1 (got '0')" in message
    assert "WORKER_CONCURRENCY: " in message


def test_a_secret_is_never_repeated_in_the_refusal() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate({"AMQP_URL": ["amqp://u:hunter2@h/"], "LOG_LEVEL": "loud"})
    message = _one_line(raised.value)
    assert "AMQP_URL: " in message and "LOG_LEVEL: " in message
    assert "hunter2" not in message


# --- the shipped patient-key secret ---------------------------------------------------------


@pytest.mark.parametrize("environment", ["production", "integration"])
def test_the_default_patient_key_secret_is_refused_outside_the_sandbox(
    monkeypatch: pytest.MonkeyPatch, environment: str
) -> None:
    monkeypatch.delenv("PATIENT_KEY_SECRET")
    message = refusal(monkeypatch, ERS_ENVIRONMENT=environment)
    assert message.startswith("PATIENT_KEY_SECRET is the shipped default")
    assert DEFAULT_PATIENT_KEY_SECRET not in message


@pytest.mark.parametrize(
    "target",
    [
        {"ERS_ENVIRONMENT": "production"},
        {"ERS_ENVIRONMENT": "integration"},
        {"ERS_BASE_URL": "https://sandbox.api.service.nhs.uk/referrals/FHIR"},
    ],
)
def test_a_static_token_is_refused_against_the_nhs_api_platform(
    monkeypatch: pytest.MonkeyPatch, target: dict[str, str]
) -> None:
    message = refusal(monkeypatch, ERS_TOKEN_PROVIDER="static", **target)
    assert message.startswith("ERS_TOKEN_PROVIDER=static sends one token for every request")


@pytest.mark.parametrize(
    "target",
    [
        {"ERS_ENVIRONMENT": "sandbox"},
        {"ERS_BASE_URL": "http://127.0.0.1:9000/referrals/FHIR"},
        {"ERS_BASE_URL": "http://sandbox:8765/referrals/FHIR", "ERS_ALLOW_PLAIN_HTTP": "true"},
    ],
)
def test_a_static_token_serves_a_sandbox(
    monkeypatch: pytest.MonkeyPatch, target: dict[str, str]
) -> None:
    for name, value in {"ERS_TOKEN_PROVIDER": "static", **target}.items():
        monkeypatch.setenv(name, value)
    assert load_settings().ers_token_provider == "static"


def test_an_empty_patient_key_secret_is_the_default_and_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert refusal(monkeypatch, PATIENT_KEY_SECRET="").startswith("PATIENT_KEY_SECRET")


def test_the_default_patient_key_secret_serves_the_sandbox_and_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PATIENT_KEY_SECRET")
    assert load_settings(demo=True).ers_environment is ErsEnvironment.PRODUCTION
    monkeypatch.setenv("ERS_ENVIRONMENT", "sandbox")
    secret = load_settings().patient_key_secret.get_secret_value()
    assert secret == DEFAULT_PATIENT_KEY_SECRET


def test_the_default_patient_key_secret_serves_an_entry_point_without_patient_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PATIENT_KEY_SECRET")
    settings = load_settings(patient_data=False)
    assert settings.ers_environment is ErsEnvironment.PRODUCTION
    assert settings.patient_key_secret.get_secret_value() == DEFAULT_PATIENT_KEY_SECRET


def commands() -> list[str]:
    (sub,) = (a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


# They read no settings: nothing to refuse (validate checks request files offline).
WITHOUT_SETTINGS = {"schemas", "env", "validate"}
# They touch patient data (requests, sagas, parked messages): a real secret or the sandbox.
WITH_PATIENT_DATA = ["dead-letters", "run", "status", "submit"]


def test_every_command_is_placed_on_one_side_of_the_secret_policy() -> None:
    # A new command must be placed: in cli.NO_PATIENT_DATA, or here with the others.
    sides = [WITHOUT_SETTINGS, set(cli.NO_PATIENT_DATA), {"demo"}, set(WITH_PATIENT_DATA)]
    assert set(commands()) == set().union(*sides)
    assert sum(map(len, sides)) == len(commands())  # no command on two sides
    assert {"jwks", "definitions"} == cli.NO_PATIENT_DATA


@pytest.mark.parametrize("command", WITH_PATIENT_DATA)
def test_a_command_that_touches_patient_data_refuses_the_default_secret(
    monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.delenv("PATIENT_KEY_SECRET")
    with pytest.raises(OperatorError, match=r"^PATIENT_KEY_SECRET is the shipped default"):
        cli._settings_for(command)


@pytest.mark.parametrize("command", ["jwks", "definitions", "demo"])
def test_the_jwks_the_definitions_and_the_demo_keep_the_default_secret(
    monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.delenv("PATIENT_KEY_SECRET")
    settings = cli._settings_for(command)
    assert settings.ers_environment is ErsEnvironment.PRODUCTION
    assert settings.patient_key_secret.get_secret_value() == DEFAULT_PATIENT_KEY_SECRET


SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "01-dbs-booked.json"


@pytest.mark.parametrize(
    "argv",
    [["definitions"], ["schemas", "--json"], ["env"], ["validate", str(SAMPLE)]],
    ids=["definitions", "schemas", "env", "validate"],
)
def test_commands_without_patient_data_run_in_production_with_the_default_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.delenv("PATIENT_KEY_SECRET")
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out and err == ""


# --- environments and the base URL -------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "url"),
    [
        ("sandbox", "http://127.0.0.1:8765/referrals/FHIR"),
        ("integration", "https://int.api.service.nhs.uk/referrals/FHIR"),
        ("production", "https://api.service.nhs.uk/referrals/FHIR"),
    ],
)
def test_the_environment_chooses_the_base_url(
    monkeypatch: pytest.MonkeyPatch, environment: str, url: str
) -> None:
    monkeypatch.setenv("ERS_ENVIRONMENT", environment)
    assert load_settings().ers_base_url == url
    monkeypatch.setenv("ERS_BASE_URL", "https://ers.example.org/referrals/FHIR")
    assert load_settings().ers_base_url == "https://ers.example.org/referrals/FHIR"


def test_production_is_the_default_environment() -> None:
    assert load_settings().ers_base_url == "https://api.service.nhs.uk/referrals/FHIR"


def test_plain_http_is_refused_unless_loopback_or_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = refusal(monkeypatch, ERS_BASE_URL="http://ers.example.org/referrals/FHIR")
    assert message.startswith("invalid settings: ERS_BASE_URL: is plain http://")
    assert "ERS_ALLOW_PLAIN_HTTP=true" in message
    monkeypatch.setenv("ERS_ALLOW_PLAIN_HTTP", "true")
    assert load_settings().ers_base_url == "http://ers.example.org/referrals/FHIR"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_plain_http_to_loopback_is_allowed(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("ERS_BASE_URL", f"http://{host}:8765/referrals/FHIR")
    assert load_settings().ers_base_url == f"http://{host}:8765/referrals/FHIR"


@pytest.mark.parametrize("url", ["ftp://ers.example.org/", "api.service.nhs.uk/referrals/FHIR"])
def test_a_base_url_that_is_not_http_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    assert refusal(monkeypatch, ERS_BASE_URL=url).startswith("invalid settings: ERS_BASE_URL: ")


# --- the env file --------------------------------------------------------------------------------


def test_worker_env_in_the_current_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "worker.env").write_text("WORKER_CONCURRENCY=7\nERS_ENVIRONMENT=integration\n")
    settings = load_settings()
    assert settings.concurrency == 7
    assert settings.ers_base_url == "https://int.api.service.nhs.uk/referrals/FHIR"


def test_the_environment_wins_over_the_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "worker.env").write_text("WORKER_CONCURRENCY=7\nAMQP_PREFETCH=3\n")
    monkeypatch.setenv("WORKER_CONCURRENCY", "9")
    settings = load_settings()
    assert (settings.concurrency, settings.prefetch) == (9, 3)


def test_worker_env_file_names_another_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "worker.env").write_text("WORKER_CONCURRENCY=7\n")
    other = tmp_path / "elsewhere.env"
    other.write_text("WORKER_CONCURRENCY=5\n")
    monkeypatch.setenv(ENV_FILE_ENV, str(other))
    assert load_settings().concurrency == 5
    monkeypatch.setenv(ENV_FILE_ENV, str(tmp_path / "missing.env"))
    assert refusal(monkeypatch) == f"{ENV_FILE_ENV}: no env file at {tmp_path / 'missing.env'}"


def test_a_bad_value_in_the_env_file_is_refused_like_one_in_the_environment(
    tmp_path: Path,
) -> None:
    (tmp_path / "worker.env").write_text("LOG_LEVEL=verbose\n")
    with pytest.raises(OperatorError, match=r"^invalid settings: LOG_LEVEL: "):
        load_settings()


def test_the_example_file_copied_to_worker_env_gives_the_defaults(tmp_path: Path) -> None:
    # What its first line tells an operator to do.
    (tmp_path / "worker.env").write_text(ENV_EXAMPLE.read_text())
    assert load_settings() == Settings()


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy"])
def test_an_https_proxy_url_is_refused_as_the_e_rs_client_would_ignore_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    message = refusal(monkeypatch, **{name: "https://user:pw@proxy.example:3128"})
    assert message.startswith(f"{name}: the proxy's URL must be http://")
    assert "pw" not in message
    monkeypatch.setenv(name, "http://proxy.example:3128")
    assert load_settings().ers_environment is ErsEnvironment.PRODUCTION


def test_an_error_naming_no_setting_never_shows_the_input() -> None:
    # A model-level check's input is every setting at once, secrets included.
    error = ValidationError.from_exception_data(
        "Settings",
        [
            {
                "type": "value_error",
                "loc": (),
                "input": {"PATIENT_KEY_SECRET": "s3cr3t-value"},
                "ctx": {"error": ValueError("settings disagree")},
            }
        ],
    )
    line = _one_line(error)
    assert "settings disagree" in line
    assert "s3cr3t-value" not in line
