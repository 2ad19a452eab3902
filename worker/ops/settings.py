"""All settings of the worker, from environment variables and ``worker.env``, built once at the
entry point by :func:`load_settings`.

``deploy/worker.env.example`` lists every variable with its default; a test keeps the two
in step. The process's environment wins over the env file, which wins over the defaults.
"""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from worker.messaging.topology import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_PREFIX,
    DEFAULT_RETRY_DELAYS,
)
from worker.ops.failpoints import ENV as FAILPOINTS_ENV
from worker.ops.failure import OperatorError
from worker.ops.loop import LoopName
from worker.saga.state import TriageRoute
from worker.saga.working_days import HolidayRegion

#: The env file read from the current directory; ENV_FILE_ENV names another one.
DEFAULT_ENV_FILE = Path("worker.env")
ENV_FILE_ENV = "WORKER_ENV_FILE"
#: The shipped patient-key secret: anyone can compute the patient key of an NHS number with it.
DEFAULT_PATIENT_KEY_SECRET = "change-me-in-production"
DEFAULT_CONCURRENCY = 20
# Messages prefetched per saga slot. Twice: a slot freed is filled at once from a message
# already here, where with as many as the slots it waited for the last one's
# acknowledgement to reach the broker and the next delivery to come back. Those waiting for
# a slot are admitted earliest turn first (clinical priority); the rest stays in RabbitMQ.
PREFETCH_PER_SLOT = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ErsEnvironment(StrEnum):
    """e-RS' environments; each has its FHIR base URL (ERS_BASE_URL overrides it)."""

    SANDBOX = "sandbox"
    INTEGRATION = "integration"
    PRODUCTION = "production"


ERS_BASE_URLS = {
    # `make sandbox` / `ers-sandbox` on its default port: no patient data, no real tokens.
    ErsEnvironment.SANDBOX: "http://127.0.0.1:8765/referrals/FHIR",
    ErsEnvironment.INTEGRATION: "https://int.api.service.nhs.uk/referrals/FHIR",
    ErsEnvironment.PRODUCTION: "https://api.service.nhs.uk/referrals/FHIR",
}


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    # An empty value (`NAME=` in the env file) means the default, as the example file says.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, env_ignore_empty=True
    )

    amqp_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        validation_alias=_env("AMQP_URL"),
        description="RabbitMQ URL (it may hold a password, so it is never printed).",
    )
    topology_prefix: str = Field(
        DEFAULT_PREFIX,
        validation_alias=_env("TOPOLOGY_PREFIX"),
        pattern=r"^[a-z0-9][a-z0-9._-]{0,40}$",
        description="Prefix of every exchange and queue the worker declares.",
    )
    prefetch: int = Field(
        PREFETCH_PER_SLOT * DEFAULT_CONCURRENCY,
        ge=1,
        le=1000,
        validation_alias=_env("AMQP_PREFETCH"),
        description=(
            "Messages RabbitMQ delivers to each of the worker's queues before any is "
            "acknowledged; twice WORKER_CONCURRENCY keeps every slot busy."
        ),
    )
    concurrency: int = Field(
        DEFAULT_CONCURRENCY,
        ge=1,
        le=1000,
        validation_alias=_env("WORKER_CONCURRENCY"),
        description="Sagas in flight at once in this process.",
    )
    delivery_limit: int = Field(
        DEFAULT_DELIVERY_LIMIT,
        ge=1,
        validation_alias=_env("AMQP_DELIVERY_LIMIT"),
        description="Quorum-queue redeliveries before a message is dead-lettered.",
    )
    shutdown_grace_seconds: float = Field(
        200.0,
        ge=0,
        validation_alias=_env("SHUTDOWN_GRACE_SECONDS"),
        description="On SIGTERM, how long in-flight sagas may run on (longer than "
        "ERS_BOOKING_TIMEOUT_SECONDS; the rest resume from their checkpoints elsewhere).",
    )
    ers_environment: ErsEnvironment = Field(
        ErsEnvironment.PRODUCTION,
        validation_alias=_env("ERS_ENVIRONMENT"),
        description="The e-RS environment: sandbox (the local ers-sandbox on 127.0.0.1:8765), "
        "integration (https://int.api.service.nhs.uk/referrals/FHIR) or production "
        "(https://api.service.nhs.uk/referrals/FHIR).",
    )
    ers_allow_plain_http: bool = Field(
        False,
        validation_alias=_env("ERS_ALLOW_PLAIN_HTTP"),
        description="Allow an http:// ERS_BASE_URL that is not loopback (a sandbox on another "
        "host); tokens and patient data would cross the network unencrypted.",
    )
    ers_base_url: str = Field(
        "",
        validate_default=True,
        validation_alias=_env("ERS_BASE_URL"),
        description="e-RS FHIR base URL (…/referrals/FHIR); empty: ERS_ENVIRONMENT's.",
    )
    ers_code_system_base_url: str | None = Field(
        None,
        validation_alias=_env("ERS_CODE_SYSTEM_BASE_URL"),
        description="Base of e-RS code-system URLs (SPECIALTY); defaults to ERS_BASE_URL.",
    )
    ers_triage_route: TriageRoute = Field(
        TriageRoute.A021,
        validation_alias=_env("ERS_TRIAGE_ROUTE"),
        description="A021 (create and send for triage) or A011_A016 (create, then A016).",
    )
    ers_timeout_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("ERS_TIMEOUT_SECONDS"),
        description="Timeout of one e-RS call.",
    )
    ers_booking_timeout_seconds: float = Field(
        150.0,
        gt=0,
        validation_alias=_env("ERS_BOOKING_TIMEOUT_SECONDS"),
        description="Timeout of A016, which may wait 2 minutes on the provider's PAS.",
    )
    ers_rate_limit_per_second: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("ERS_RATE_LIMIT_PER_SECOND"),
        description="The whole application's e-RS budget, shared by every replica "
        "(e-RS production allows 10 requests/s per application).",
    )
    rate_limit_redis_url: SecretStr | None = Field(
        None,
        validation_alias=_env("RATE_LIMIT_REDIS_URL"),
        description="Redis that replicas share the e-RS budget through (redis://...). "
        "Unset: one replica on SQLite spends the whole budget; on PostgreSQL each spends "
        "1/ERS_RATE_LIMIT_MAX_REPLICAS of it.",
    )
    ers_rate_limit_max_replicas: int = Field(
        4,
        ge=1,
        le=100,
        validation_alias=_env("ERS_RATE_LIMIT_MAX_REPLICAS"),
        description="The most replicas that may run: without the shared store each spends "
        "1/N of the budget, so that together they never exceed it.",
    )
    ers_max_attempts: int = Field(
        4,
        ge=1,
        le=20,
        validation_alias=_env("ERS_MAX_ATTEMPTS"),
        description="Attempts of one e-RS call on transient faults (429, 503, network).",
    )
    ers_retry_initial_seconds: float = Field(
        1.0,
        ge=0,
        validation_alias=_env("ERS_RETRY_INITIAL_SECONDS"),
        description="First backoff wait; doubles per attempt, with jitter.",
    )
    ers_retry_max_seconds: float = Field(
        30.0,
        ge=0,
        validation_alias=_env("ERS_RETRY_MAX_SECONDS"),
        description="Longest single backoff wait (also caps Retry-After).",
    )
    ers_token_provider: Literal["message-access-token", "message-id-token", "static", "message"] = (
        Field(
            "message-access-token",
            validation_alias=_env("ERS_TOKEN_PROVIDER"),
            description="message-access-token: the user's access token from each message's "
            "x-ers-access-token header (message is its old name); message-id-token: the user's "
            "CIS2 ID token from x-ers-id-token, exchanged at the API platform (APIM_*); "
            "static: ERS_STATIC_TOKEN for every message (sandbox only).",
        )
    )
    ers_static_token: SecretStr | None = Field(
        None,
        validation_alias=_env("ERS_STATIC_TOKEN"),
        description="The token for ERS_TOKEN_PROVIDER=static.",
    )
    # --- the API platform's token exchange (ERS_TOKEN_PROVIDER=message-id-token) ---
    apim_token_url: str = Field(
        "",
        validation_alias=_env("APIM_TOKEN_URL"),
        description="The API platform's token endpoint; empty: /oauth2/token at the origin of "
        "ERS_BASE_URL (https://int.api.service.nhs.uk/oauth2/token for integration).",
    )
    apim_api_key: str = Field(
        "",
        validation_alias=_env("APIM_API_KEY"),
        description="The application's API key on the API platform (iss and sub of the client "
        "assertion).",
    )
    apim_key_id: str = Field(
        "",
        validation_alias=_env("APIM_KEY_ID"),
        description="The kid of the private key that signs client assertions (RS512).",
    )
    apim_private_key_dir: Path | None = Field(
        None,
        validation_alias=_env("APIM_PRIVATE_KEY_DIR"),
        description="A directory of private keys, one <kid>.pem each (a mounted Kubernetes "
        "Secret); every one is published by `ers-worker jwks`.",
    )
    apim_private_key: SecretStr | None = Field(
        None,
        validation_alias=_env("APIM_PRIVATE_KEY"),
        description="A PEM private key for APIM_KEY_ID, when it is not in APIM_PRIVATE_KEY_DIR.",
    )
    apim_token_margin_seconds: float = Field(
        60.0,
        ge=0,
        le=300,
        validation_alias=_env("APIM_TOKEN_MARGIN_SECONDS"),
        description="An exchanged access token is used until this long before it expires.",
    )
    slot_page_size: int = Field(
        20,
        ge=1,
        le=100,
        validation_alias=_env("SLOT_PAGE_SIZE"),
        description="A015 page size when looking for the earliest slot.",
    )
    slot_max_pages: int = Field(
        5,
        ge=1,
        le=50,
        validation_alias=_env("SLOT_MAX_PAGES"),
        description="A015 pages read at most when looking for the earliest slot.",
    )
    booking_max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        validation_alias=_env("BOOKING_MAX_ATTEMPTS"),
        description="Slots tried when the chosen one is taken, before deferring.",
    )
    letters_dir: Path = Field(
        Path("letters"),
        validation_alias=_env("LETTERS_DIR"),
        description="Where patient letter PDFs are written (0600 files in a 0700 directory).",
    )
    letters_retention_days: float = Field(
        30.0,
        ge=0,
        validation_alias=_env("LETTERS_RETENTION_DAYS"),
        description="Letters older than this are deleted (swept when a letter is written, at "
        "most hourly; 0: kept for ever).",
    )
    bank_holiday_region: HolidayRegion = Field(
        HolidayRegion.ENGLAND_AND_WALES,
        validation_alias=_env("BANK_HOLIDAY_REGION"),
        description="Whose bank holidays contact-by dates skip: england-and-wales, scotland, "
        "northern-ireland, or none (weekends only).",
    )
    reference_data_ttl_seconds: float = Field(
        3600.0,
        ge=0,
        validation_alias=_env("REFERENCE_DATA_TTL_SECONDS"),
        description="How long A004 reference data is cached in the process.",
    )
    saga_store: Literal["sqlite", "postgres"] = Field(
        "sqlite",
        validation_alias=_env("SAGA_STORE"),
        description="sqlite: embedded, one replica; postgres: shared by several replicas.",
    )
    saga_store_path: Path = Field(
        Path("var/sagas.db"),
        validation_alias=_env("SAGA_STORE_PATH"),
        description="The SQLite saga store file (SAGA_STORE=sqlite).",
    )
    postgres_dsn: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/test"),
        validation_alias=_env("POSTGRES_DSN"),
        description="The PostgreSQL saga store (SAGA_STORE=postgres).",
    )
    postgres_schema: str = Field(
        "public",
        validation_alias=_env("POSTGRES_SCHEMA"),
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Schema of the saga table in PostgreSQL.",
    )
    saga_lease_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("SAGA_LEASE_SECONDS"),
        description="How long a replica owns a saga without renewing it (a heartbeat renews "
        "it every third of this while the saga runs); a dead replica's sagas are taken over "
        "after this.",
    )
    reconcile_horizon_seconds: float = Field(
        300.0,
        gt=0,
        validation_alias=_env("RECONCILE_HORIZON_SECONDS"),
        description="A create (A011/A021) whose answer was lost and that is not on e-RS' "
        "worklists is sent again only this long after it was first sent: longer than any "
        "e-RS or API-platform request timeout.",
    )
    reconcile_window_seconds: float = Field(
        3600.0,
        gt=0,
        validation_alias=_env("RECONCILE_WINDOW_SECONDS"),
        description="Past this long after a lost create was sent, its absence from e-RS' "
        "worklists no longer proves it was not made (it could have been booked or triaged "
        "since): a person decides.",
    )
    ers_clock_skew_seconds: float = Field(
        60.0,
        ge=0,
        validation_alias=_env("ERS_CLOCK_SKEW_SECONDS"),
        description="How far e-RS' clock may be behind ours when matching a lost create to "
        "a worklist item by its creation time.",
    )
    replica_name: str = Field(
        "",
        validation_alias=_env("REPLICA_NAME"),
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$|^$",
        description="This replica's stable name (the pod name in Kubernetes), unique among "
        "running replicas: a restarted replica takes its own sagas back at once. Empty: a "
        "name of its own per process, and a dead process's sagas wait out their lease.",
    )
    patient_key_secret: SecretStr = Field(
        SecretStr("change-me-in-production"),
        validation_alias=_env("PATIENT_KEY_SECRET"),
        description="Key of the hash that stands for a patient in the saga store (same on "
        "every replica).",
    )
    retry_delays_seconds: str = Field(
        DEFAULT_RETRY_DELAYS,
        validation_alias=_env("RETRY_DELAYS_SECONDS"),
        pattern=r"^\d+(\.\d+)?(,\d+(\.\d+)?)*$",
        description="Delay-queue tiers for sagas waiting out an e-RS fault (seconds; the last "
        "tier repeats).",
    )
    retry_budget_seconds: float = Field(
        14400.0,
        gt=0,
        validation_alias=_env("RETRY_BUDGET_SECONDS"),
        description="How long after first receipt a request may keep waiting before it fails.",
    )
    metrics_port: int = Field(
        9102,
        ge=0,
        le=65535,
        validation_alias=_env("METRICS_PORT"),
        description="Port of /metrics, /healthz and /readyz (0: any free port).",
    )
    metrics_host: str = Field(
        "0.0.0.0",
        validation_alias=_env("METRICS_HOST"),
        description="Address the metrics and health endpoint listens on.",
    )
    event_loop: LoopName = Field(
        "uvloop",
        validation_alias=_env("EVENT_LOOP"),
        description="The event loop: uvloop (libuv's, less CPU per referral) or asyncio "
        "(Python's own, if uvloop is ever suspected).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO",
        validation_alias=_env("LOG_LEVEL"),
        description="Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )
    failpoints: str = Field(
        "",
        validation_alias=_env(FAILPOINTS_ENV),
        description="Test-only crash points (worker.ops.failpoints); never set in production.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ers_base_url")
    @classmethod
    def _base_url_of_the_environment(cls, value: str, info: ValidationInfo) -> str:
        environment: ErsEnvironment | None = info.data.get("ers_environment")
        if not value:
            if environment is None:
                return value  # ERS_ENVIRONMENT is wrong, and said so
            value = ERS_BASE_URLS[environment]
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an https:// URL (…/referrals/FHIR)")
        allowed = info.data.get("ers_allow_plain_http", False)
        if parts.scheme == "http" and not allowed and not _loopback(parts.hostname):
            raise ValueError(
                "is plain http:// to a host that is not loopback: use https://, "
                "or set ERS_ALLOW_PLAIN_HTTP=true for a sandbox on another host"
            )
        return value

    @property
    def code_system_base_url(self) -> str:
        return self.ers_code_system_base_url or self.ers_base_url

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.retry_delays_seconds.split(","))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(
    *, demo: bool = False, patient_data: bool = True, env_file: Path | None = None
) -> Settings:
    """The settings of an entry point, or an :class:`OperatorError` naming what is wrong.

    Reads the environment, then the env file (WORKER_ENV_FILE, else ./worker.env if there is
    one). ``demo`` is `ers-worker demo`, which runs against its own sandbox. An entry point
    that touches no patient data (``patient_data=False``; which ones is the CLI's
    ``NO_PATIENT_DATA``) may keep the shipped PATIENT_KEY_SECRET: it keys no patient.
    """
    named = env_file or (Path(os.environ[ENV_FILE_ENV]) if os.environ.get(ENV_FILE_ENV) else None)
    if named is not None and not named.is_file():
        raise OperatorError(f"{ENV_FILE_ENV}: no env file at {named}")
    path = named or DEFAULT_ENV_FILE
    try:
        settings = Settings(_env_file=path if path.is_file() else None)
    except ValidationError as error:
        raise OperatorError(_one_line(error)) from None
    except SettingsError as error:
        raise OperatorError(f"unreadable settings in the environment or {path}: {error}") from None
    _refuse_an_https_proxy()
    secret = settings.patient_key_secret.get_secret_value()
    if (
        secret == DEFAULT_PATIENT_KEY_SECRET
        and patient_data
        and not demo
        and settings.ers_environment is not ErsEnvironment.SANDBOX
    ):
        raise OperatorError(
            "PATIENT_KEY_SECRET is the shipped default, with which anyone can compute a "
            "patient's key from the NHS number: set a long random secret (the same on every "
            "replica), or ERS_ENVIRONMENT=sandbox"
        )
    if settings.ers_token_provider == "static" and _on_the_nhs_platform(settings.ers_base_url):
        raise OperatorError(
            "ERS_TOKEN_PROVIDER=static sends one token for every request, whoever the "
            "clinician: only a sandbox takes that; against the NHS API platform use "
            "message-access-token or message-id-token"
        )
    return settings


def _on_the_nhs_platform(base_url: str) -> bool:
    """Whether e-RS is the NHS API platform's (integration or production), where every call
    must carry its own clinician's token."""
    host = urlsplit(base_url).hostname or ""
    return host == "api.service.nhs.uk" or host.endswith(".api.service.nhs.uk")


def _refuse_an_https_proxy() -> None:
    """aiohttp ignores an https:// proxy from the environment, with a warning: e-RS calls
    would bypass a proxy the site requires."""
    for name in ("HTTPS_PROXY", "https_proxy"):
        if os.environ.get(name, "").lower().startswith("https://"):
            raise OperatorError(
                f"{name}: the proxy's URL must be http:// (e-RS calls are tunnelled through it "
                "over TLS); an https:// proxy would be ignored by the e-RS client"
            )


_SECRETS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
_ALIASES = {
    name: field.validation_alias.choices[0]  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
}


def _one_line(error: ValidationError) -> str:
    """Each bad setting with what it may be; a secret's value is never repeated."""
    problems = []
    for problem in error.errors(include_url=False):
        where = str(problem["loc"][0]) if problem["loc"] else ""
        field = next((n for n, a in _ALIASES.items() if where in (n, a)), None)
        name = _ALIASES.get(field, where) if field else where
        message = problem["msg"].removeprefix("Value error, ")
        # Only a named, non-secret setting's value is shown: an error without a field (a
        # model-level check) carries every setting as its input, secrets included.
        shown = "" if field is None or field in _SECRETS else f" (got {problem['input']!r})"
        problems.append(f"{name}: {message}{shown}")
    return "invalid settings: " + "; ".join(problems)


# Settings that only the fault-injection tests set: not in the operators' example file.
_NOT_FOR_OPERATORS = frozenset({"failpoints"})


def env_example() -> str:
    """Every setting as an environment file with its default (deploy/worker.env.example)."""
    lines = [
        "# Every setting of ers-worker, with its default. Copy to worker.env in the directory",
        "# ers-worker runs in (or name another file in WORKER_ENV_FILE) and edit: the process's",
        "# environment wins over the file. An empty value means the default.",
        "# Generated by `ers-worker env`; tests/unit/ops/test_settings.py keeps it current.",
    ]
    for name, field in Settings.model_fields.items():
        if name in _NOT_FOR_OPERATORS:
            continue
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if isinstance(default, bool):
            default = str(default).lower()
        text = "" if default is None else str(getattr(default, "value", default))
        lines += ["", f"# {field.description}", f"{field.validation_alias.choices[0]}={text}"]  # type: ignore[union-attr]
    return "\n".join(lines) + "\n"
