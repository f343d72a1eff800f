"""
The documentation's links and paths resolve: every relative link in README.md, SECURITY.md, BENCHMARKS.md
and docs/*.md names a file that exists, and its anchor a heading of that file (GitHub's slugs); every
repository path written in backticks (``include/...``, ``dags/...``, ``tests/x.py::test_y``...) exists; and
every dotted ``include.cmdb_inventory...`` name is a module (and attribute) that exists. Standard library
only: no Airflow import, a second or so.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.docs.markdown import ROOT, Document, github_slug

DOCS = sorted(
    [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")]
)
# Backticked text that names a path of this repository (from its root), with an optional ::test_name.
_TOP = ("include", "dags", "devtools", "plugins", "bench", "tests", "docs")
_REPO_PATH_RE = re.compile(rf"^(?:{'|'.join(_TOP)})(?:/[\w.*-]+)*/?(?:::\w+)?\Z", re.ASCII)
_DOTTED_RE = re.compile(r"^include(?:\.\w+)+\Z", re.ASCII)
_LINE_ANCHOR_RE = re.compile(r"^L(\d+)(?:-L(\d+))?\Z")


@cache
def _document(path: Path) -> Document:
    return Document.read(path)


@cache
def _top_level_names(path: Path) -> frozenset[str]:
    """Functions, classes and assigned names defined anywhere in a module (tests are often nested)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def link_problems(document: Document) -> list[str]:
    """What is wrong with the document's relative links and anchors (empty when nothing is)."""
    problems: list[str] = []
    where = _relative(document.path) if document.path.is_relative_to(ROOT) else str(document.path)
    for line, target in document.links():
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue  # http(s), mailto: not ours to check offline
        path_part, anchor = unquote(parts.path), unquote(parts.fragment)
        if path_part.startswith("/"):
            problems.append(f"{where}:{line}: {target}: absolute path (GitHub resolves it to the site root)")
            continue
        resolved = (document.path.parent / path_part).resolve() if path_part else document.path
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where}:{line}: {target}: outside the repository")
            continue
        if path_part and not resolved.exists():
            problems.append(f"{where}:{line}: {target}: no such file {_relative(resolved)}")
            continue
        if not anchor:
            continue
        if resolved.suffix == ".md":
            anchors = _document(resolved).anchors() if resolved != document.path else document.anchors()
            if anchor not in anchors:
                problems.append(f"{where}:{line}: {target}: no heading #{anchor} in {_relative(resolved)}")
        elif resolved.is_file():
            lines = _LINE_ANCHOR_RE.match(anchor)
            count = len(resolved.read_text("utf-8").splitlines())
            if not lines or max(int(n) for n in lines.groups() if n) > count:
                problems.append(f"{where}:{line}: {target}: #{anchor} is not a line of {_relative(resolved)}")
        else:
            problems.append(f"{where}:{line}: {target}: an anchor on a directory")
    return problems


def path_problems(document: Document) -> list[str]:
    """What is wrong with the repository paths and dotted module names the document writes in backticks."""
    problems: list[str] = []
    where = _relative(document.path) if document.path.is_relative_to(ROOT) else str(document.path)
    for line, span in document.code_spans():
        if _REPO_PATH_RE.match(span):
            path, _, name = span.partition("::")
            if "*" in path:
                if not any(ROOT.glob(path)):
                    problems.append(f"{where}:{line}: `{span}`: matches no file")
                continue
            if not (ROOT / path).exists():
                problems.append(f"{where}:{line}: `{span}`: no such path")
            elif name and name not in _top_level_names(ROOT / path):
                problems.append(f"{where}:{line}: `{span}`: {path} defines no {name}")
        elif _DOTTED_RE.match(span):
            problem = _dotted_problem(span)
            if problem:
                problems.append(f"{where}:{line}: `{span}`: {problem}")
    return problems


def _dotted_problem(dotted: str) -> str | None:
    """Why ``include.x.y.Name`` names nothing (the longest module prefix must exist, then one attribute)."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:end])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if not module.is_file():
            continue
        rest = parts[end:]
        if not rest:
            return None
        if len(rest) == 1 and rest[0] in _top_level_names(module):
            return None
        return f"{_relative(module)} defines no {'.'.join(rest)}"
    return "no such module"


@pytest.mark.parametrize("path", DOCS, ids=_relative)
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert path.is_file(), f"{_relative(path)} is missing"
    problems = link_problems(_document(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=_relative)
def test_every_repository_path_in_backticks_exists(path: Path) -> None:
    problems = path_problems(_document(path))
    assert not problems, "\n".join(problems)


def test_the_reference_is_in_docs_and_the_readme_stays_short() -> None:
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {
        "configuration.md",
        "output-contract.md",
        "iam.md",
        "operations.md",
        "testing.md",
        "deployment.md",
    } <= names
    readme = _document(ROOT / "README.md")
    linked = {unquote(urlsplit(t).path) for _, t in readme.links()}
    assert {f"docs/{name}" for name in names} <= linked, "the README links every page of docs/"
    assert len((ROOT / "README.md").read_text("utf-8").splitlines()) <= 150


# The checker itself: each kind of breakage is found (so a green run means something).


def _parse(text: str, name: str = "docs/_probe.md") -> Document:
    return Document.parse(ROOT / name, text)


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Output contract", "output-contract"),
        ("Commits: a snapshot never shows half-written", "commits-a-snapshot-never-shows-half-written"),
        ("What happens when…", "what-happens-when"),
        ("Settings (`.env`)", "settings-env"),
        ("`sns_topic_arn`", "sns_topic_arn"),
        ("`CMDBApplication`: the hub role", "cmdbapplication-the-hub-role"),
        ("Downstream DAGs: the Asset", "downstream-dags-the-asset"),
        ("The architecture: import-linter", "the-architecture-import-linter"),
        ("A — B", "a--b"),
    ],
)
def test_slugs_are_githubs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_a_broken_link_a_missing_anchor_and_a_missing_path_are_found() -> None:
    probe = _parse(
        "# Probe\n\n## Twice\n\n## Twice\n\n"
        "[ok](configuration.md#params) [self](#twice-1) [up](../include/iam/cmdb-discovery.yaml#L1)\n"
        "[gone](missing.md) [no heading](configuration.md#no-such-section) [own](#nowhere)\n"
        "[far](../../etc/passwd) [web](https://example.com/x.md#y) [line](../Makefile#L99999)\n\n"
        "`include/cmdb_inventory/contract.py` `include/cmdb_inventory/nothing.py` `include/iam/*.yaml`\n"
        "`tests/unit/test_config.py::no_such_test` `include.cmdb_inventory.contract.Layout`\n"
        "`include.cmdb_inventory.contract.NoSuchName` `devtools/gateway.py`\n\n"
        "```\n[in a fence](missing-too.md) `include/not/checked.py`\n```\n"
        "<!-- [in a comment](missing-three.md) -->\n"
        "`[in code](missing-four.md)`\n"
    )
    links = link_problems(probe)
    assert len(links) == 5, links
    assert any("missing.md: no such file" in p for p in links)
    assert any("no heading #no-such-section in docs/configuration.md" in p for p in links)
    assert any("#nowhere" in p for p in links)
    assert any("outside the repository" in p for p in links)
    assert any("#L99999 is not a line of Makefile" in p for p in links)
    paths = path_problems(probe)
    assert len(paths) == 3, paths
    assert any("nothing.py`: no such path" in p for p in paths)
    assert any("defines no no_such_test" in p for p in paths)
    assert any("contract.py defines no NoSuchName" in p for p in paths)
