"""The docs quote real code: every fenced block that starts with ``# file: PATH`` must appear
verbatim in that file, so the walkthroughs ("Extending", ...) cannot drift from the code."""

from __future__ import annotations

import re

from tests.helpers.cli import REPO

BLOCK = re.compile(r"^```[a-z]*\n# file: (?P<path>\S+)\n(?P<body>.*?)^```$", re.M | re.S)


DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_every_quoted_block_is_in_the_file_it_names():
    checked = 0
    for page in DOCS:
        for block in BLOCK.finditer(page.read_text()):
            source = (REPO / block["path"]).read_text()
            assert block["body"] in source, f"{page.name}'s block from {block['path']} is not in that file"
            checked += 1
    assert checked >= 9


def _quoted(page: str) -> set[str]:
    return {block["path"] for block in BLOCK.finditer((REPO / "docs" / page).read_text())}


def test_each_walkthrough_quotes_the_files_a_newcomer_writes():
    assert {"src/sparseforge/methods/er_ace.py", "configs/method/er_ace.yaml"} <= _quoted("extending.md")
    assert {"src/sparseforge/sparsity/rules/momentum.py", "configs/sparsity/momentum.yaml"} <= _quoted("extending.md")
    assert {"src/sparseforge/models/mlp.py", "configs/model/mlp.yaml"} <= _quoted("extending.md")
    assert {"src/sparseforge/data/cub.py", "configs/dataset/cub200.yaml", "tests/data/test_cub200.py"} <= _quoted(
        "extending-datasets.md"
    )
