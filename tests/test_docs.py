"""Every relative link in the project's Markdown leads to a file or folder of the repository
(folders get moved: `figures/real-mini` -> `figures/real-mini-<commit>`)."""
from __future__ import annotations

import re

import pytest

from conftest import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS = sorted(p.relative_to(REPO) for p in [
    REPO / "README.md", REPO / "DESIGN.md", *(REPO / "benchmarks").glob("*.md"),
    *(REPO / "figures").rglob("*.md")] if "runs" not in p.relative_to(REPO).parts)


def relative_links(text: str) -> list[str]:
    """Link targets without their #anchor, leaving out URLs (scheme:...) and bare anchors."""
    targets = (match.group(1).split("#", 1)[0] for match in LINK.finditer(text))
    return [t for t in targets if t and not re.match(r"[a-zA-Z][a-zA-Z+.-]*:", t)]


def test_relative_links_are_told_from_urls_and_anchors():
    text = "[a](figures/x.png) [b](https://x.org/y) [c](#top) [d](../up/z.md#part) [e](mailto:me@x)"
    assert relative_links(text) == ["figures/x.png", "../up/z.md"]


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_every_relative_link_resolves(doc):
    path = REPO / doc
    broken = [t for t in relative_links(path.read_text()) if not (path.parent / t).exists()]
    assert not broken, f"{doc} links to missing {broken}"
