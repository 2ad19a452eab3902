"""deploy/worker.env.example lists every setting, with the default the code has."""

from pathlib import Path

from worker.ops.settings import Settings, env_example

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
