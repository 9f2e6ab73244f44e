"""Every relative link and anchor in README.md and docs/*.md points at a file and a heading that exist.

Anchors follow GitHub's rule: the heading in lower case, punctuation dropped, each space a hyphen, and `-1`, `-2`
after a heading's second and third occurrence.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps only its text
    text = re.sub(r"[^\w\- ]", "", text.lower())  # backticks, dots, colons, brackets, ×, → ...
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        if count:
            seen[f"{anchor}-{count}"] = 1
    return set(seen)


def relative_links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [target for target in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("Parameters (`params.yaml`)") == "parameters-paramsyaml"
    assert github_anchor("Scale-out: remotes, the queue, torchrun, GPUs") == "scale-out-remotes-the-queue-torchrun-gpus"
    assert github_anchor("Several experiments at once: DVC's queue") == "several-experiments-at-once-dvcs-queue"
    assert github_anchor("The study: every encoding over several seeds, one report") == (
        "the-study-every-encoding-over-several-seeds-one-report"
    )


def test_links_are_found_outside_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[a](#a-page) [web](https://x.org)\n\n```\n[no](nowhere.md)\n```\n")
    assert relative_links(page) == ["#a-page"]
    assert anchors(page) == {"a-page"}


def test_the_pages_have_links_to_check():
    assert len(PAGES) >= 9  # README.md and the docs pages it maps
    assert sum(len(relative_links(page)) for page in PAGES) >= 30


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {os.path.relpath(linked, REPO_ROOT)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {os.path.relpath(linked, REPO_ROOT)}")
    assert not broken, f"{page.relative_to(REPO_ROOT)}: " + "; ".join(broken)
