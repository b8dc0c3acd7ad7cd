"""Which tensors are sparse: conv and linear weights, chosen by position and name patterns.

Biases and normalisation parameters always stay dense. Layers are listed in registration order
(``model.named_modules()``), which is forward order for the models shipped here and in timm, so
"first" and "last" layer mean the stem and the classifier.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

from sparseforge.errors import ConfigError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module, types: Iterable[type[nn.Module]] = PRUNABLE_TYPES) -> dict[str, nn.Module]:
    """Every conv/linear module with a weight, by name, in registration order."""
    types = tuple(types)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, types) and getattr(module, "weight", None) is not None
    }


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    dense_first_layer: bool = False,
    dense_last_layer: bool = False,
    config_prefix: str = "sparsity",
    dense_first_conv: bool = False,
) -> dict[str, nn.Module]:
    """The layers whose weights get masks.

    ``include``/``exclude`` are shell-style patterns on module names (``layer*.*.conv?``,
    ``blocks.*.mlp.fc*``). An include pattern that matches no conv/linear module is an error
    (it is almost always a typo), and so is a selection that leaves nothing sparse.
    ``dense_first_conv`` keeps the first layer dense only when it is a convolution.
    """
    candidates = prunable_layers(model)
    names = list(candidates)
    if not names:
        raise ConfigError(f"{config_prefix}.include", "the model has no Conv or Linear layer to sparsify")
    chosen = list(names)
    if include:
        for pattern in include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ConfigError(
                    f"{config_prefix}.include",
                    f"pattern {pattern!r} matches no Conv/Linear module",
                    f"names such as {shown}",
                )
        chosen = [n for n in chosen if _matches(n, include)]
    if exclude:
        chosen = [n for n in chosen if not _matches(n, exclude)]
    first_is_conv = isinstance(candidates[names[0]], (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    if (dense_first_layer or (dense_first_conv and first_is_conv)) and names[0] in chosen:
        chosen.remove(names[0])
    if dense_last_layer and names[-1] in chosen:
        chosen.remove(names[-1])
    if not chosen:
        raise ConfigError(f"{config_prefix}.include", "the selection leaves no layer to sparsify")
    return {n: candidates[n] for n in chosen}
