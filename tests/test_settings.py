"""deploy/worker.env.example lists every setting, with the default the code has."""

from pathlib import Path

from pydantic import SecretStr

from worker.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "worker.env.example"


def _documented() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def _default_text(value: object) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def test_env_example_lists_every_setting_with_its_default() -> None:
    documented = _documented()
    expected = {
        field.validation_alias.choices[0]: _default_text(field.default)  # type: ignore[union-attr]
        for field in Settings.model_fields.values()
    }
    assert documented == expected


def test_environment_configures_the_worker(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ERS_BASE_URL", "http://127.0.0.1:9/referrals/FHIR")
    monkeypatch.setenv("WORKER_CONCURRENCY", "7")
    monkeypatch.setenv("ERS_TRIAGE_ROUTE", "A011_A016")
    settings = Settings()
    assert settings.concurrency == 7
    assert settings.code_system_base_url == "http://127.0.0.1:9/referrals/FHIR"
    assert settings.ers_triage_route.value == "A011_A016"
