"""
Just enough Markdown for the documentation tests: fenced blocks, headings and GitHub's anchors, links,
inline code spans. Standard library only, so the link test stays fast (no Airflow import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_CODE_SPAN_RE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_LINK_RE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_RE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
_HTML_ANCHOR_RE = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


@dataclass(frozen=True)
class Fence:
    """A fenced code block: its info string (``json``, ``bash``...), its text, its first line's number."""

    info: str
    text: str
    line: int


@dataclass(frozen=True)
class Document:
    """One Markdown file, split into prose (fenced blocks and HTML comments blanked) and fenced blocks."""

    path: Path
    prose: str
    fences: tuple[Fence, ...]
    headings: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> Document:
        """Parse ``path``."""
        return cls.parse(path, path.read_text("utf-8"))

    @classmethod
    def parse(cls, path: Path, text: str) -> Document:
        """Parse ``text`` as if it were the file ``path``."""
        prose: list[str] = []
        fences: list[Fence] = []
        headings: list[str] = []
        fence: tuple[str, str, int, list[str]] | None = None
        for number, line in enumerate(text.splitlines(), 1):
            opening = _FENCE_RE.match(line)
            if fence is not None:
                marker, info, start, body = fence
                if opening and opening.group(1)[0] == marker[0] and len(opening.group(1)) >= len(marker):
                    fences.append(Fence(info, "\n".join(body), start))
                    fence = None
                else:
                    body.append(line)
                prose.append("")  # keep line numbers: prose and file lines stay aligned
                continue
            if opening:
                fence = (opening.group(1), opening.group(2), number, [])
                prose.append("")
                continue
            prose.append(line)
        text_prose = _COMMENT_RE.sub(lambda m: "\n" * m.group().count("\n"), "\n".join(prose))
        for line in text_prose.splitlines():
            match = _HEADING_RE.match(line)
            if match:
                headings.append(match.group(2))
        return cls(path, text_prose, tuple(fences), tuple(headings))

    def anchors(self) -> set[str]:
        """Every anchor GitHub gives this file: its headings' slugs (numbered when repeated), HTML anchors."""
        found: set[str] = set(_HTML_ANCHOR_RE.findall(self.prose))
        seen: dict[str, int] = {}
        for heading in self.headings:
            slug = github_slug(heading)
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        return found

    def paragraphs(self) -> list[tuple[int, str]]:
        """The prose in blocks separated by blank lines, each with its first line's number."""
        blocks: list[tuple[int, str]] = []
        current: list[str] = []
        start = 0
        for number, line in enumerate(self.prose.splitlines(), 1):
            if line.strip():
                if not current:
                    start = number
                current.append(line)
            elif current:
                blocks.append((start, "\n".join(current)))
                current = []
        if current:
            blocks.append((start, "\n".join(current)))
        return blocks

    def code_spans(self) -> list[tuple[int, str]]:
        """Every inline code span of the prose (outside fenced blocks and comments), with its line."""
        spans: list[tuple[int, str]] = []
        for start, block in self.paragraphs():
            for match in _CODE_SPAN_RE.finditer(block):
                line = start + block.count("\n", 0, match.start())
                spans.append((line, match.group(2).strip()))
        return spans

    def links(self) -> list[tuple[int, str]]:
        """Every link target of the prose (inline, images and reference definitions), with its line."""
        targets: list[tuple[int, str]] = []
        for start, block in self.paragraphs():
            # Code spans are not links: blank them (same length, so positions and lines stay).
            plain = _CODE_SPAN_RE.sub(lambda m: "x" * len(m.group()), block)
            for regex in (_LINK_RE, _REFERENCE_RE):
                for match in regex.finditer(plain):
                    targets.append((start + plain.count("\n", 0, match.start()), match.group(1)))
        return targets


def _inline_text(heading: str) -> str:
    """A heading's text as rendered: links by their text, no code-span backticks, no emphasis stars."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return text.replace("`", "").replace("*", "")


def github_slug(heading: str) -> str:
    """
    The anchor GitHub gives a heading (its slugger): the rendered text in lower case, every character that
    is not a letter, a digit, a space, ``-`` or ``_`` dropped, then each space replaced by ``-``.
    """
    text = _inline_text(heading).strip().lower()
    kept = "".join(c for c in text if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")
