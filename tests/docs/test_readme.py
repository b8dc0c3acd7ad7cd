"""README's walkthrough quotes real code: every fenced block that starts with ``# file: PATH``
must appear verbatim in that file, so the "Adding a method" section cannot drift from the code."""

from __future__ import annotations

import re

from tests.helpers.cli import REPO

BLOCK = re.compile(r"^```[a-z]*\n# file: (?P<path>\S+)\n(?P<body>.*?)^```$", re.M | re.S)


def test_every_quoted_block_is_in_the_file_it_names():
    blocks = list(BLOCK.finditer((REPO / "README.md").read_text()))
    assert len(blocks) >= 4  # the method, its state, its schema and its config
    for block in blocks:
        source = (REPO / block["path"]).read_text()
        assert block["body"] in source, f"README's block from {block['path']} is not in that file"
