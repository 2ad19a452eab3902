"""NHS Digital's e-RS specification and examples, from ../shared/ers-spec beside the checkout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

SPEC_DIR = Path(__file__).resolve().parents[4] / "shared/ers-spec"
EXAMPLES = SPEC_DIR / "examples/stu3"
ENDPOINTS = SPEC_DIR / "specification/components/stu3/schemas/endpoints"
RESPONSES = SPEC_DIR / "specification/components/stu3/schemas/responses"

requires_spec = pytest.mark.skipif(not SPEC_DIR.is_dir(), reason=f"{SPEC_DIR} not present")

_EXAMPLE_REF = re.compile(r"summary:\s*(.+?)\s*\n\s*value:\s*\n\s*\$ref:\s*'([^']+)'")
_TABLE_ROW = re.compile(r"^\s*\|(.+)\|\s*$")
_BACKTICK_PAIR = re.compile(r"`([^`]+)`=`([^`]*)`")


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def example_files(relative_dir: str) -> list[Path]:
    folder = EXAMPLES / relative_dir
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def with_base_url(value: Any, base_url: str) -> Any:
    """The example with its `_baseUrl_` placeholders pointing at the sandbox."""
    text = orjson.dumps(value).decode()
    return orjson.loads(re.sub("_baseUrl_", base_url, text, flags=re.IGNORECASE))


def example_summaries(yaml_path: Path) -> dict[str, str]:
    """Example file name -> the summary the specification gives it."""
    if not yaml_path.is_file():
        return {}
    return {
        Path(ref).name: summary.strip("\"'")
        for summary, ref in _EXAMPLE_REF.findall(yaml_path.read_text())
    }


def business_function_for(yaml_name: str, example_name: str) -> str:
    summary = example_summaries(ENDPOINTS / yaml_name).get(example_name, "")
    return "REFERRING_CLINICIAN_ADMIN" if "admin" in summary.lower() else "REFERRING_CLINICIAN"


def scenario_rows(yaml_name: str) -> list[tuple[str, dict[str, str]]]:
    """The 'Sandbox test scenarios' table: (scenario, {parameter: value})."""
    path = ENDPOINTS / yaml_name
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        match = _TABLE_ROW.match(line)
        if match is None:
            continue
        cells = [cell.strip() for cell in match.group(1).split("|")]
        if len(cells) >= 2 and _BACKTICK_PAIR.search(cells[1]):
            rows.append((cells[0], dict(_BACKTICK_PAIR.findall(cells[1]))))
    return rows
