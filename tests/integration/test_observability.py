"""The observability deliverables: Prometheus alerts (with their promtool unit tests), the
scrape config, the Grafana dashboard, and the worker's metrics as a real Prometheus sees them.

promtool and prometheus come from Debian's `prometheus` package (`.ci/install-prometheus`);
the tests fail, saying so, when they are missing. The end-to-end test runs a real Prometheus
on loopback, scraping the in-process worker every second while it handles requests through
RabbitMQ and the e-RS sandbox, and reads the counters back through Prometheus' HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.harness import Harness, mixed_batch, sample
from worker.observability.metrics import Metrics
from worker.ops.settings import Settings

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "ers-worker.json"
INSTALL_SCRIPT = ROOT / ".ci" / "install-prometheus"

REQUIRED_ALERTS = {
    "ErsWorkerDeadLetters",
    "ErsApiErrorRateHigh",
    "ErsApiRateLimited",
    "ErsWorkerNoProgress",
    "ErsSagasNeedReconciliation",
    "ErsWorkerDown",
    "ErsWorkerNotConsuming",
    "ErsSagaStuck",
    "ErsNoSuccessfulCalls",
    "ErsTokenExchangeClientRefused",
    "ErsTokenExchangeFailing",
}

# What RabbitMQ's /metrics/detailed serves for the families deploy/prometheus/prometheus.yml
# asks for (rabbitmq_prometheus' metrics-detailed.md): the only rabbitmq_* names the alerts
# and the dashboard may use.
RABBITMQ_FAMILIES = {
    "queue_coarse_metrics": {
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_unacked",
        "rabbitmq_detailed_queue_messages",
        "rabbitmq_detailed_queue_process_reductions_total",
    },
    "queue_consumer_count": {"rabbitmq_detailed_queue_consumers"},
}

WORKER_NAME = re.compile(r"\bers_worker_[A-Za-z0-9_]+")
RABBITMQ_NAME = re.compile(r"\brabbitmq_[A-Za-z0-9_]+")
PROCESS_NAME = re.compile(r"\bprocess_[A-Za-z0-9_]+")

# Grafana's variables, replaced by values Prometheus accepts, to check a panel's PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "15s",
    "$instance": ".*",
    "$prefix": "ers",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The worker's /metrics port for the end-to-end test (a marker's arguments are fixed when
# this module is imported).
WORKER_METRICS_PORT = free_port()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH: run .ci/install-prometheus (it installs Debian's "
            "`prometheus` package, which provides promtool and the prometheus server)",
            pytrace=False,
        )
    return path


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


# ------------------------------------------------------------------------------------------
# The files as text: alerts.yml is kept in a regular layout (one `- alert:` item per rule),
# which is enough to read it without a YAML library; promtool checks the YAML itself.


def without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def alert_exprs(text: str) -> list[str]:
    """The PromQL of every rule of alerts.yml."""
    return re.findall(r"^\s+expr: \|\n(.*?)\n\s+(?:for|labels):", text, re.MULTILINE | re.DOTALL)


def alert_blocks(text: str) -> list[tuple[str, str]]:
    """(alert name, the rule's text) for each rule of alerts.yml."""
    parts = re.split(r"^\s*- alert: *", without_comments(text), flags=re.MULTILINE)[1:]
    return [(part.split("\n", 1)[0].strip(), part) for part in parts]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def with_grafana_variables_replaced(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def exported_samples() -> dict[str, str]:
    """Every sample name the worker's registry can export, with its metric family's name."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    samples: dict[str, str] = {}
    for family in Metrics().registry.collect():
        samples.update((sample.name, family.name) for sample in family.samples)
        samples.update((family.name + s, family.name) for s in suffixes.get(family.type, []))
    return samples


def rabbitmq_names_scraped() -> set[str]:
    """The rabbitmq_detailed_* names the scrape config's family parameters bring in."""
    families = re.search(r"family:\s*\[([^\]]*)\]", without_comments(SCRAPE_CONFIG.read_text()))
    assert families, "prometheus.yml asks RabbitMQ's /metrics/detailed for no families"
    names: set[str] = set()
    for family in (f.strip() for f in families.group(1).split(",")):
        names |= RABBITMQ_FAMILIES[family]
    return names


# ------------------------------------------------------------------------------------------
# promtool


def test_alert_rules_pass_promtool_check() -> None:
    result = run(tool("promtool"), "check", "rules", ALERTS)
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", ALERT_TESTS)
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_scrape_config_passes_promtool_check() -> None:
    result = run(tool("promtool"), "check", "config", SCRAPE_CONFIG)
    assert_ok(result)
    text = without_comments(SCRAPE_CONFIG.read_text())
    for job, port in (("ers-worker", 9102), ("rabbitmq", 15692), ("rabbitmq-queues", 15692)):
        job_text = text.split(f"job_name: {job}\n", 1)
        assert len(job_text) == 2, f"no scrape job {job}"
        assert str(port) in job_text[1].split("job_name:", 1)[0], f"job {job} not on {port}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every panel query, Grafana variables filled in, is PromQL promtool accepts (as the
    expression of a recording rule in a throwaway rules file; JSON is YAML)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": with_grafana_variables_replaced(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", path)
    assert_ok(result)
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_install_script_is_a_no_op_when_the_tools_are_there() -> None:
    tool("promtool")
    tool("prometheus")
    started = time.monotonic()
    result = run("bash", INSTALL_SCRIPT, timeout=30)
    assert_ok(result)
    assert result.stdout == "" and result.stderr == ""
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------------------------------
# The alerts and the dashboard against what the worker exports


def test_every_alert_has_severity_summary_and_its_runbook() -> None:
    blocks = alert_blocks(ALERTS.read_text())
    names = {name for name, _ in blocks}
    assert names >= REQUIRED_ALERTS, f"missing alerts: {REQUIRED_ALERTS - names}"
    for name, block in blocks:
        assert re.search(r"^\s+severity: (critical|warning)$", block, re.MULTILINE), name
        assert re.search(r"^\s+summary: \S", block, re.MULTILINE), name
        assert re.search(r"^\s+description: \S", block, re.MULTILINE), name
        runbook = f'runbook_url: "docs/operations.md#{name.lower()}"'
        assert runbook in block, f"{name} has no {runbook}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = without_comments(ALERT_TESTS.read_text())
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", tests)
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    names = {name for name, _ in alert_blocks(ALERTS.read_text())}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_alerts_and_dashboard_use_only_metrics_that_exist() -> None:
    exported = exported_samples()
    scraped_from_rabbitmq = rabbitmq_names_scraped()
    exprs = alert_exprs(ALERTS.read_text())
    assert len(exprs) == len(alert_blocks(ALERTS.read_text())), "an alert's expr not found"
    sources = {
        "alerts.yml": "\n".join(exprs),
        **{f"panel {title!r}": expr for title, expr in dashboard_exprs()},
    }
    for where, text in sources.items():
        for name in WORKER_NAME.findall(text):
            assert name in exported, f"{where} uses {name}, which the worker does not export"
        for name in RABBITMQ_NAME.findall(text):
            assert name in scraped_from_rabbitmq, (
                f"{where} uses {name}, which the rabbitmq-queues scrape job does not bring in"
            )
    # And the dashboard shows every metric the worker has (the client's process_*, python_*
    # collectors aside: their CPU, memory and file-descriptor series have panels of their own).
    shown = {exported[name] for _, expr in dashboard_exprs() for name in WORKER_NAME.findall(expr)}
    ours = {family for family in exported.values() if family.startswith("ers_worker_")}
    assert ours - shown == set(), "worker metrics that no panel shows"
    process = {n for _, expr in dashboard_exprs() for n in PROCESS_NAME.findall(expr)}
    assert process >= {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    assert process <= set(exported), f"panels use process metrics the worker lacks: {process}"


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "ers-worker"
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in all_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in all_panels(board["panels"]):
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] == "row":  # a row only groups the panels below it
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
    titles = " ".join(p["title"].lower() for p in all_panels(board["panels"]))
    for topic in (
        "result",
        "outcome",
        "path",
        "latency",
        "status class",
        "retries",
        "delay",
        "dead-letter",
        "queue depth",
        "in flight",
        "oldest",
    ):
        assert topic in titles, f"no panel about {topic}"


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    datasource = (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "apiVersion: 1" in datasource
    assert re.search(r"^\s+type: prometheus$", datasource, re.MULTILINE)
    assert re.search(r"^\s+uid: prometheus$", datasource, re.MULTILINE)
    provider = (GRAFANA_DIR / "provisioning" / "dashboards" / "ers-worker.yml").read_text()
    assert "apiVersion: 1" in provider
    assert re.search(r"^\s+type: file$", provider, re.MULTILINE)
    assert re.search(r"^\s+path: /\S+$", provider, re.MULTILINE)


# ------------------------------------------------------------------------------------------
# End to end: a real Prometheus scraping a real worker


@dataclass
class PrometheusServer:
    url: str
    log: Path

    async def query(self, client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        response = await client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def values(self, client: httpx.AsyncClient, expr: str) -> dict[str, float]:
        """An instant vector aggregated to one label or none, as {label value or "": value}."""
        found: dict[str, float] = {}
        for r in await self.query(client, expr):
            labels = [v for k, v in r["metric"].items() if k != "__name__"]
            assert len(labels) <= 1, f"{expr}: aggregate to one label at most ({r['metric']})"
            found[labels[0] if labels else ""] = float(r["value"][1])
        return found

    async def wait_for(
        self,
        client: httpx.AsyncClient,
        expr: str,
        expected: dict[str, float],
        timeout: float = 15.0,
    ) -> None:
        """Poll until the query gives exactly `expected` (scrapes land every second).

        Zero-valued series are left out on both sides: the worker shows every known label
        set from the start, at 0, so that rate() sees the first event.
        """
        wanted = {k: v for k, v in expected.items() if v}
        await eventually(
            lambda: self.values(client, expr),
            lambda got: {k: v for k, v in got.items() if v} == wanted,
            f"{expr} == {expected}",
            timeout,
        )

    async def firing_alerts(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        response = await client.get(f"{self.url}/api/v1/alerts")
        alerts: list[dict[str, Any]] = response.json()["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    what: str,
    timeout: float,
) -> T:
    """Run `probe` until `done` says its answer will do, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await probe()
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last answer: {answer}")
        await asyncio.sleep(0.2)


def wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    with httpx.Client(timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if client.get(f"{url}/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready within 20 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)


@pytest.fixture
def prometheus(settings: Settings, tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus on a free loopback port scraping the test's worker every second, with
    the real alert rules evaluated every second; killed at the end whatever happens."""
    binary = tool("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "ers-worker",
                "static_configs": [{"targets": [f"127.0.0.1:{settings.metrics_port}"]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = tmp_path / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_until_ready(process, url, log)
            yield PrometheusServer(url, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def wait_for_metrics_endpoint(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
                if response.status_code == 200 and "ers_worker_build_info" in response.text:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the worker serves no /metrics on 127.0.0.1:{port} (METRICS_PORT)",
                    pytrace=False,
                )
            await asyncio.sleep(0.1)


PANELS_WITH_DATA_AFTER_A_RUN = {
    "Messages consumed by result",
    "Sagas finished by outcome",
    "Sagas finished by path",
    "e-RS latency p95 by endpoint",
    "e-RS calls by status class",
    "Dead-lettered by reason",
    "Sagas in flight by worker",
    "Worker builds",
}

VALID_SAMPLES = [
    "01-dbs-booked.json",
    "02-dbs-deferred-no-slots.json",
    "03-ibs-shortlisted.json",
    "04-ras-triage.json",
    "05-shortlist-only.json",
]


@pytest.mark.worker_settings(metrics_port=WORKER_METRICS_PORT)
async def test_prometheus_scrapes_what_the_worker_did(
    prometheus: PrometheusServer, harness: Harness, settings: Settings
) -> None:
    await wait_for_metrics_endpoint(settings.metrics_port)
    requests = mixed_batch(len(VALID_SAMPLES), VALID_SAMPLES)
    cids = [await harness.publish(request) for request in requests]
    invalid = await harness.publish(sample("06-invalid-nhs-number.json"))
    await harness.wait_until(lambda: all(harness.outcomes(c) for c in [*cids, invalid]))
    statuses = Counter(harness.outcomes(c)[0]["status"] for c in cids)
    assert statuses == {"COMPLETED": len(cids)}, statuses
    assert harness.outcomes(invalid)[0]["status"] == "REJECTED"
    paths = Counter(harness.outcomes(c)[0]["path"].lower() for c in cids)
    logged = await harness.sandbox.requests()
    ers_calls = Counter(entry["endpoint"] for entry in logged)
    status_classes = Counter(f"{entry['status'] // 100}xx" for entry in logged)
    n = len(cids)

    async with httpx.AsyncClient(timeout=5.0) as client:
        p = prometheus
        await p.wait_for(client, 'sum(up{job="ers-worker"})', {"": 1.0})
        await p.wait_for(
            client,
            "sum by (outcome) (ers_worker_sagas_finished_total)",
            {"completed": n, "rejected": 1},
        )
        await p.wait_for(
            client,
            'sum by (path) (ers_worker_sagas_finished_total{outcome="completed"})',
            {path: float(count) for path, count in paths.items()},
        )
        await p.wait_for(
            client,
            "sum by (result) (ers_worker_messages_consumed_total)",
            {"processed": n, "rejected": 1},
        )
        await p.wait_for(
            client,
            "sum by (reason) (ers_worker_dead_lettered_messages_total)",
            {"invalid_message": 1},
        )
        # Every e-RS call the sandbox answered, counted once, by endpoint and status; each timed.
        await p.wait_for(client, "sum(ers_worker_api_requests_total)", {"": ers_calls.total()})
        await p.wait_for(
            client,
            "sum by (endpoint) (ers_worker_api_requests_total)",
            {endpoint: float(count) for endpoint, count in ers_calls.items()},
        )
        await p.wait_for(
            client,
            "sum by (status_class) (ers_worker_api_requests_total)",
            {status_class: float(count) for status_class, count in status_classes.items()},
        )
        await p.wait_for(
            client,
            "sum(ers_worker_api_request_duration_seconds_count)",
            {"": ers_calls.total()},
        )
        await p.wait_for(client, "sum(ers_worker_sagas_in_flight)", {"": 0.0})
        await p.wait_for(client, "sum(ers_worker_consumer_attached)", {"": 1.0})

        build = await p.query(client, "ers_worker_build_info")
        assert len(build) == 1 and build[0]["value"][1] == "1", build
        assert build[0]["metric"]["version"] and build[0]["metric"]["python"]
        # The process's own health, from the client's collectors on the served registry.
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
            (value,) = (await p.values(client, f'sum({name}{{job="ers-worker"}})')).values()
            assert value > 0, name
        (since_success,) = (
            await p.values(client, "time() - max(ers_worker_api_last_success_timestamp_seconds)")
        ).values()
        assert 0 <= since_success < 60

        # Every dashboard query runs; the ones about what just happened have data.
        for title, expr in dashboard_exprs():
            query = with_grafana_variables_replaced(expr)
            if title in PANELS_WITH_DATA_AFTER_A_RUN:  # a rate needs two scrapes
                await eventually(partial(p.query, client, query), bool, title, timeout=10.0)
            else:
                await p.query(client, query)

        # The real rules on real series: the parked message (a counter born at 1) fires
        # ErsWorkerDeadLetters; nothing else fires on a healthy run.
        firing = await eventually(
            lambda: p.firing_alerts(client), bool, "a firing alert", timeout=10.0
        )
        assert [(a["labels"]["alertname"], a["labels"].get("reason")) for a in firing] == [
            ("ErsWorkerDeadLetters", "invalid_message")
        ], firing
