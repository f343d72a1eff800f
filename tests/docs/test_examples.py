"""
Every configuration example in the documentation is a Variable the DAG accepts: each ``json`` block of
README.md and docs/*.md that holds an object with a ``bucket`` is parsed by ``config.parse_settings``, as
``resolve_accounts`` parses the Variable (no AWS call: Organizations is asked only at run time).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.docs.markdown import ROOT, Document

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def variable_examples() -> list[tuple[str, str]]:
    """(where, JSON text) of every fenced ``json`` block that is a configuration object (has a bucket)."""
    found: list[tuple[str, str]] = []
    for path in DOCS:
        for fence in Document.read(path).fences:
            if fence.info != "json":
                continue
            try:
                value = json.loads(fence.text)
            except ValueError:
                continue  # e.g. an excerpt with "…": not a whole document
            if isinstance(value, dict) and "bucket" in value:
                found.append((f"{path.relative_to(ROOT).as_posix()}:{fence.line}", fence.text))
    return found


EXAMPLES = variable_examples()


def test_the_readme_and_the_configuration_page_have_examples() -> None:
    places = {where.split(":")[0] for where, _ in EXAMPLES}
    assert {"README.md", "docs/configuration.md"} <= places


@pytest.mark.parametrize(("where", "text"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_configuration_example_is_a_valid_variable(where: str, text: str) -> None:
    from include.cmdb_inventory.config import parse_settings

    settings = parse_settings(text)
    assert settings.bucket == json.loads(text)["bucket"], where


def test_an_invalid_example_would_fail(tmp_path: Path) -> None:
    from include.cmdb_inventory.config import ConfigError, parse_settings

    text = '```json\n{"bucket": "b-ok", "acounts": ["111111111111"]}\n```\n'  # a misspelt key
    probe = Document.parse(tmp_path / "probe.md", text)
    with pytest.raises(ConfigError, match="acounts"):
        parse_settings(probe.fences[0].text)
