"""The pages under docs/ quote real code and link to pages that exist: every fenced block that
starts with ``# file: PATH`` must appear verbatim in that file, so walkthroughs cannot drift."""

from __future__ import annotations

import re

import pytest

from tests.docs.test_readme import BLOCK
from tests.helpers.cli import REPO

PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\((?P<target>[^)#\s]+\.md)(#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_quoted_blocks_are_in_the_files_they_name(page):
    for block in BLOCK.finditer(page.read_text()):
        source = (REPO / block["path"]).read_text()
        assert block["body"] in source, f"{page.name}: the block from {block['path']} is not in that file"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_point_at_pages_that_exist(page):
    for link in LINK.finditer(page.read_text()):
        if "://" not in link["target"]:
            assert (page.parent / link["target"]).is_file(), f"{page.name} links to missing {link['target']}"


def test_the_dataset_walkthrough_quotes_the_module_its_config_and_its_test():
    quoted = {block["path"] for block in BLOCK.finditer((REPO / "docs" / "extending-datasets.md").read_text())}
    assert {"src/sparseforge/data/cub.py", "configs/dataset/cub200.yaml", "tests/data/test_cub200.py"} <= quoted
