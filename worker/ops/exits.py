"""The exit codes every ``ers-worker`` subcommand shares, and the environment's failures as lines.

A script reads the code; a person reads the one line on stderr, which says what is wrong and
what to do. :func:`explain` turns the failures an operator can fix (a broker that is down, a
refused login, a prefix with no topology, PostgreSQL unreachable or refusing, a signing key
that is missing or unusable) into an
:class:`OperatorError`; anything it does not know is a bug and keeps its traceback.
"""

from __future__ import annotations

import re

import aiormq.exceptions as amqp
import asyncpg
from pydantic import ValidationError
from yarl import URL

from worker.ers.keys import KeyProblem
from worker.ops.failure import OperatorError
from worker.ops.settings import Settings

OK = 0  # everything asked for was done: every outcome COMPLETED, every message valid
NOT_ALL = 1  # some did not: an outcome not COMPLETED or none in time, an invalid message,
# nothing found under an id
USAGE = 2  # usage or environment error: bad arguments or settings, unreadable file, broker or
# database unreachable or refusing, no topology under the prefix
NOT_CONSUMING = 3  # `run` only: the worker stopped because it could not consume again
INTERRUPTED = 130  # SIGINT (Ctrl-C) before the command finished

TABLE = """\
exit codes (the same for every subcommand):
  0    done: every outcome COMPLETED, every message valid, everything asked for found
       (demo: every sample has its outcome; the invalid sample is meant to be REJECTED)
  1    some did not: an outcome REJECTED/FAILED/..., no outcome within --timeout,
       an invalid message, no saga or parked message with that id
  2    usage or environment error (one line on stderr says what to do): bad arguments or
       settings, an unreadable file or key, RabbitMQ or PostgreSQL unreachable or refusing
       the login, no topology under TOPOLOGY_PREFIX
  3    run: stopped because it could not consume again after a reconnect
  130  interrupted (Ctrl-C)"""


def _where(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


def _user(url: str) -> str:
    return URL(url).user or "(none)"


def _broker_text(exc: BaseException) -> str:
    # The broker's own reason ("NOT_FOUND - no queue 'x' in vhost '/'") names resources and
    # users only, never a password.
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.split(": ", 1)[-1].strip('"')


def _amqp(exc: BaseException, settings: Settings) -> OperatorError | None:
    url = settings.amqp_url.get_secret_value()
    prefix = settings.topology_prefix
    if isinstance(exc, amqp.ProbableAuthenticationError | amqp.AuthenticationError):
        return OperatorError(
            f"RabbitMQ at {_where(url)} refused the login of user '{_user(url)}' "
            "(ACCESS_REFUSED): check the user name and password in AMQP_URL."
        )
    if isinstance(exc, amqp.AMQPConnectionError):
        return OperatorError(
            f"RabbitMQ is not reachable at {_where(url)}: start one with "
            "`rabbitmq-server -detached` (or set AMQP_URL), then run again."
        )
    if isinstance(exc, amqp.ProtocolSyntaxError):
        return OperatorError(
            f"RabbitMQ at {_where(url)} closed the connection while it opened (most often the "
            "virtual host in AMQP_URL does not exist or the user may not use it): check AMQP_URL."
        )
    if isinstance(exc, amqp.ChannelNotFoundEntity):
        found = re.search(r"no (queue|exchange) '([^']*)'", _broker_text(exc))
        what = f"{found.group(1)} '{found.group(2)}'" if found else "such queue or exchange"
        return OperatorError(
            f"RabbitMQ at {_where(url)} has no {what} (TOPOLOGY_PREFIX={prefix}): check "
            "TOPOLOGY_PREFIX; the worker declares its topology when it starts."
        )
    if isinstance(exc, amqp.ChannelAccessRefused):
        return OperatorError(
            f"RabbitMQ refused user '{_user(url)}': {_broker_text(exc)}; grant it permissions "
            "(rabbitmqctl set_permissions) or use another user in AMQP_URL."
        )
    if isinstance(exc, amqp.ChannelPreconditionFailed):
        return OperatorError(
            f"RabbitMQ's topology under '{prefix}' differs from this worker's: "
            f"{_broker_text(exc)}; compare it with `ers-worker definitions`."
        )
    return None


def _postgres(exc: BaseException, settings: Settings) -> OperatorError | None:
    url = URL(settings.postgres_dsn.get_secret_value())
    where = f"PostgreSQL at {url.host}:{url.port or 5432}{url.path}"
    role = f"role '{url.user}'" if url.user else "the login role"
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return OperatorError(f"{where} refused the password of {role}: check POSTGRES_DSN.")
    if isinstance(
        exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidCatalogNameError
    ):
        return OperatorError(f"{where} refused the connection ({exc}): check POSTGRES_DSN.")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return OperatorError(
            f"{where}: {role} lacks a privilege ({exc}); reading sagas needs USAGE on schema "
            f"'{settings.postgres_schema}' and SELECT on its ers_sagas table."
        )
    if isinstance(exc, asyncpg.UndefinedTableError):
        # Without USAGE on the schema, PostgreSQL too says the table does not exist.
        return OperatorError(
            f"{where} has no saga table in schema '{settings.postgres_schema}' that {role} "
            "can see: check POSTGRES_DSN and POSTGRES_SCHEMA, and that the role has USAGE on "
            "the schema (the worker creates the table when it starts)."
        )
    if isinstance(exc, asyncpg.TooManyConnectionsError | asyncpg.CannotConnectNowError):
        return OperatorError(f"{where} turned the connection away ({exc}): try again later.")
    return None


def _settings_error(exc: ValidationError) -> OperatorError:
    first = exc.errors(include_url=False, include_input=False)[0]
    name = ".".join(str(part) for part in first["loc"]).upper() or "a setting"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return OperatorError(f"setting {name} is invalid: {first['msg']}{more}; fix it and run again.")


def explain(exc: BaseException, settings: Settings | None) -> OperatorError | None:
    """The operator-fixable failure ``exc`` stands for, or None when it is a bug."""
    if isinstance(exc, OperatorError):
        return exc
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return _settings_error(exc)
    if isinstance(exc, KeyProblem):  # it names the setting or file, never the key
        return OperatorError(f"{exc}; fix it and run again (docs/security.md: Keys and rotation).")
    if settings is None:
        return None
    return _amqp(exc, settings) or _postgres(exc, settings)
