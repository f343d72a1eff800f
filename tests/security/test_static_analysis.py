"""
Static analysis (issue point 8): ruff's security rules (``S``, bandit's checks) run clean over the product
code — ``dags/``, ``plugins/``, ``include/`` — with the configuration ignored (``--isolated``), so no
per-file ignore or global ignore can hide a finding; the only exceptions are ``# noqa`` comments that name
the rule they silence (no blanket ``# noqa``), each on the one line it concerns. And SECURITY.md points
only at tests that exist.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["dags", "plugins", "include"]
RUFF = Path(sys.executable).with_name("ruff")


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUFF), "check", "--isolated", "--no-cache", "--output-format", "concise", *args, *PRODUCT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ruff_security_rules_are_clean_on_the_product_code() -> None:
    result = ruff("--select", "S")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed" in result.stdout


def test_security_findings_are_silenced_only_by_name_and_line() -> None:
    assert ruff("--select", "PGH004").returncode == 0  # PGH004: blanket noqa
    # Every security noqa names S rules explicitly: a finding silenced is a finding read.
    for path in (p for d in PRODUCT for p in (ROOT / d).rglob("*.py")):
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            found = re.search(r"#\s*noqa\b(:?)\s*([A-Z0-9, ]*)", line)
            if found:
                assert found.group(1) == ":", f"{path}:{number}: blanket noqa"
                codes = {c.strip() for c in found.group(2).split(",") if c.strip()}
                assert codes, f"{path}:{number}: noqa without a rule"


def test_the_configuration_does_not_switch_security_rules_off_for_product_code() -> None:
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["ruff"]["lint"]
    assert "S" in lint["select"]
    assert not [code for code in lint.get("ignore", []) if code.startswith("S")]
    for pattern, codes in lint.get("per-file-ignores", {}).items():
        if any(code.startswith("S") for code in codes):
            assert pattern.startswith(("tests/", "bench/", "devtools/")), pattern


def test_security_md_names_only_tests_that_exist() -> None:
    text = (ROOT / "SECURITY.md").read_text("utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(named) >= 10
    for path, test in named:
        source = ROOT / path
        assert source.is_file(), path
        if test:
            functions = {
                node.name
                for node in ast.walk(ast.parse(source.read_text("utf-8")))
                if isinstance(node, ast.FunctionDef)
            }
            assert test in functions, f"{path}::{test}"
