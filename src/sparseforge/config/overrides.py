"""Command-line overrides as Hydra users write them, normalised before Hydra reads them."""

from __future__ import annotations

from collections.abc import Iterable

# Groups listed in configs/train.yaml's defaults with a null option: Hydra refuses to append
# ``+group=x`` to them ("Multiple values"), but ``+experiment=x`` is the spelling many
# Hydra projects document, so it is taken as ``experiment=x`` (likewise ``+study=x``).
NULL_DEFAULT_GROUPS = ("experiment", "study", "arm", "debug", "hparams_search")


def normalise_overrides(overrides: Iterable[str]) -> list[str]:
    out = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if key.startswith("+") and not key.startswith("++") and key[1:] in NULL_DEFAULT_GROUPS:
            override = override[1:]
        out.append(override)
    return out
