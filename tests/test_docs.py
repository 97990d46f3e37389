"""The README and docs/ point at files that exist: a page or a results file moved or renamed breaks its links."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text())
            if not target.startswith(("http://", "https://", "mailto:", "#"))]


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file (the part before any #anchor) does not exist."""
    return [target for target in relative_links(page) if not (page.parent / target.split("#", 1)[0]).exists()]


def test_every_relative_link_in_the_readme_and_docs_names_a_file_of_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in pages for target in broken_links(page)]
    assert not broken, broken
    assert "../benchmarks/results/history.md" in relative_links(ROOT / "docs" / "performance.md")


def test_a_link_to_a_missing_file_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[here](here.md), [gone](docs/gone.md#part), [site](https://example.org), [top](#top)\n")
    (tmp_path / "here.md").write_text("")
    assert relative_links(page) == ["here.md", "docs/gone.md#part"]
    assert broken_links(page) == ["docs/gone.md#part"]
