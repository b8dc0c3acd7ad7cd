"""docs/fidelity.md stays in step with the configs: every override it quotes composes on top of its
section's preset and passes the options' own validation, and every option it names exists.

The page marks each section with ``<!-- compose: OVERRIDES -->``. Inside a section, an inline code
span whose words are all ``key=value`` overrides of this project's config (the first key part a
top-level config key, or ``+experiment``) is one override set; a span that is a dotted option name
(``method.sample_order``) must be a key of the composed config. Upstream names in code spans
(``--fc_density``, ``Source/helper.py: ...``) are left alone: they are not our keys.
"""

from __future__ import annotations

import re
from functools import cache

import pytest
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from sparseforge.options import build_options
from tests.helpers.cli import REPO
from tests.helpers.config import compose_config

PAGE = REPO / "docs" / "fidelity.md"
SECTION = re.compile(r"^<!-- compose: (?P<base>.*?) -->$", re.M)
SPAN = re.compile(r"`([^`\n]+)`")
OVERRIDE = re.compile(r"^\+?(?P<key>[a-z_][a-z0-9_]*)(\.[a-z0-9_]+)*=\S+$")
OPTION = re.compile(r"^(?P<key>[a-z_][a-z0-9_]*)(\.[a-z0-9_]+)+$")
MISSING = object()


@cache
def top_level_keys() -> frozenset[str]:
    return frozenset(compose_config([]).keys()) | {"experiment"}


def sections() -> list[tuple[list[str], str]]:
    """(base overrides, text) of every section that carries a compose note."""
    text = PAGE.read_text()
    marks = list(SECTION.finditer(text))
    assert len(marks) >= 7, "every method section declares the preset its overrides compose on"
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [(m["base"].split(), text[m.end() : end]) for m, end in zip(marks, ends, strict=True)]


def quoted(text: str) -> tuple[set[tuple[str, ...]], set[str]]:
    """(override sets, option names) quoted in a section."""
    override_sets, options = set(), set()
    for span in SPAN.findall(text):
        words = span.split()
        matches = [OVERRIDE.match(w) for w in words]
        if all(matches) and all(m["key"] in top_level_keys() for m in matches):
            override_sets.add(tuple(words))
        elif len(words) == 1 and (m := OPTION.match(span)) and m["key"] in top_level_keys():
            options.add(span)
    return override_sets, options


def validate(cfg) -> None:
    """What ``train.build`` checks before any work, short of loading data and building the model:
    the method's options, the sparsity group (its options or N:M schedule), dataset and groups."""
    values = OmegaConf.to_container(cfg.method, resolve=True)
    method = get_object(values.pop("_target_"))
    build_options(method.Options, values, "method")
    if cfg.sparsity.get("_target_"):
        instantiate(cfg.sparsity)
    instantiate(cfg.dataset)
    instantiate(cfg.optimizer_groups)


CASES = [
    pytest.param(base, overrides, id=" ".join(overrides))
    for base, text in sections()
    for overrides in sorted(quoted(text)[0])
]


def test_the_page_quotes_overrides_for_every_method_section():
    assert len(CASES) >= 25
    for base, text in sections():
        assert quoted(text)[0] or quoted(text)[1], f"section on {base} quotes no option"


@pytest.mark.parametrize(("base", "overrides"), CASES)
def test_every_quoted_override_composes_on_its_sections_preset_and_validates(base, overrides):
    validate(compose_config([*base, *overrides]))


@pytest.mark.parametrize(("base", "text"), sections(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_named_option_exists(base, text):
    cfg = compose_config(base)
    validate(cfg)
    for option in sorted(quoted(text)[1]):
        assert OmegaConf.select(cfg, option, default=MISSING) is not MISSING, f"{option} is not an option ({base})"
