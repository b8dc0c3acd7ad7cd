"""Layer-wise densities: uniform, Erdős–Rényi (ER) and Erdős–Rényi-Kernel (ERK).

Budget convention (RigL's): ``density`` is the fraction of non-zeros over the weights of the
*sparse* layers, i.e. the selected conv/linear weights. Layers kept dense by option
(``dense_first_layer``, ``dense_last_layer``, ``exclude``, not ``include``d) are outside the
budget: they neither consume nor free any of it. Layers that ER/ERK caps at density 1 are inside
the budget; the others share what is left (the scale factor ε is re-solved after each capping,
as in RigL, adding every layer tied at the highest score at once).

Counts are exact integers: each layer's real-valued target ``d_l * N_l`` is rounded once by the
largest-remainder method, so every layer is within one weight of its target and the total is
``round(density * sum(N_l))`` exactly.

Random_Pruning's two "plus" distributions (VITA-Group/Random_Pruning), on the sparse layers in
registration order (the first is the stem, the last the classifier):

- ``uniform_plus`` (``CIFAR/sparselearning/core.py: Masking.init``, mode ``uniform_plus``): the
  first layer dense. If ``density < f`` (f = ``fc_density``, default 0.2) the classifier is at
  f and every other layer at ``(density * N - N_first - f * N_classifier) / N``, N counting all
  sparse layers, as upstream (so the total ends slightly below the budget); otherwise every
  other layer, the classifier included, is at ``density`` and the dense first layer comes on top.
- ``erk_plus`` (``ImageNet/core.py: Masking.init``, mode ``ERK_plus``): the classifier at
  ``fc_density`` (default 1.0, upstream's ``--fc_density``), charged to the budget; ERK with
  capping over the other layers at ``(density * N - fc_density * N_classifier) / (N - N_classifier)``,
  so the total is the budget.

The counts are exact here too (upstream draws Bernoulli masks, exact only in expectation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import nn

from sparseforge.errors import ConfigError
from sparseforge.sparsity.targets import prunable_layers, select_layers

Shape = Sequence[int]


def raw_score(shape: Shape, distribution: str, erk_power_scale: float = 1.0) -> float:
    """Unnormalised density score of one weight tensor (PyTorch layout: out, in, *kernel)."""
    if distribution == "uniform":
        return 1.0
    if distribution == "er":  # channel dimensions only; RigL applies no power here
        n_out, n_in = shape[0], (shape[1] if len(shape) > 1 else 1)
        return (n_out + n_in) / (n_out * n_in)
    if distribution == "erk":
        return (sum(shape) / math.prod(shape)) ** erk_power_scale
    raise ConfigError("sparsity.distribution", f"unknown value {distribution!r}", "uniform, er, erk (raw scores)")


def solve_densities(
    shapes: Mapping[str, Shape],
    density: float,
    distribution: str = "erk",
    erk_power_scale: float = 1.0,
    fc_density: float | None = None,
) -> dict[str, float]:
    """Real-valued layer densities with RigL's iterative capping (no rounding)."""
    if distribution == "uniform_plus":
        return _uniform_plus(shapes, density, 0.2 if fc_density is None else fc_density)
    if distribution == "erk_plus":
        return _erk_plus(shapes, density, erk_power_scale, 1.0 if fc_density is None else fc_density)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if distribution == "uniform" or density >= 1.0:
        return {name: float(min(density, 1.0)) for name in shapes}
    scores = {name: raw_score(shape, distribution, erk_power_scale) for name, shape in shapes.items()}
    total = sum(sizes.values())
    capped: set[str] = set()
    eps = 0.0
    while len(capped) < len(shapes):
        free = [n for n in shapes if n not in capped]
        budget = density * total - sum(sizes[n] for n in capped)
        eps = budget / sum(scores[n] * sizes[n] for n in free)
        top = max(scores[n] for n in free)
        if eps * top <= 1.0:
            break
        capped |= {n for n in free if scores[n] == top}
    return {name: 1.0 if name in capped else eps * scores[name] for name in shapes}


def _ends(shapes: Mapping[str, Shape], distribution: str) -> tuple[str, str, dict[str, int]]:
    if len(shapes) < 2:
        raise ConfigError(
            "sparsity.distribution", f"{distribution} needs a first layer and a classifier among the sparse layers"
        )
    names = list(shapes)
    return names[0], names[-1], {name: math.prod(shape) for name, shape in shapes.items()}


def _too_low(distribution: str, density: float, why: str) -> ConfigError:
    return ConfigError("sparsity.density", f"{density} is too low for {distribution}: {why}", "a higher density")


def _uniform_plus(shapes: Mapping[str, Shape], density: float, floor: float) -> dict[str, float]:
    first, last, sizes = _ends(shapes, "uniform_plus")
    if density >= floor:
        return {name: 1.0 if name == first else min(density, 1.0) for name in shapes}
    total = sum(sizes.values())
    rest = (density * total - sizes[first] - floor * sizes[last]) / total
    if rest <= 0 and len(shapes) > 2:
        raise _too_low("uniform_plus", density, f"the dense first layer and the classifier at {floor} use it all")
    return {name: 1.0 if name == first else floor if name == last else rest for name in shapes}


def _erk_plus(shapes: Mapping[str, Shape], density: float, power: float, fc_density: float) -> dict[str, float]:
    _, last, sizes = _ends(shapes, "erk_plus")
    total = sum(sizes.values())
    rest = (density * total - fc_density * sizes[last]) / (total - sizes[last])
    if rest <= 0:
        raise _too_low("erk_plus", density, f"the classifier at fc_density={fc_density} uses it all")
    others = {name: shape for name, shape in shapes.items() if name != last}
    return {**solve_densities(others, rest, "erk", power), last: fc_density}


def apportion(sizes: Mapping[str, int], densities: Mapping[str, float], total: int | None = None) -> dict[str, int]:
    """Integer non-zero counts summing to ``total``: largest-remainder rounding of ``densities[l] * sizes[l]``.

    ``total`` defaults to the rounded sum of the targets; pass it when it is known exactly
    (``round(density * sum(sizes))``), so float error in the targets cannot shift it.
    """
    targets = {n: min(densities[n], 1.0) * sizes[n] for n in sizes}
    counts = {n: min(math.floor(t), sizes[n]) for n, t in targets.items()}
    if total is None:
        total = math.floor(sum(targets.values()) + 0.5)
    missing = total - sum(counts.values())
    position = {n: i for i, n in enumerate(sizes)}  # ties go to the earlier layer
    for name in sorted(sizes, key=lambda n: (counts[n] - targets[n], position[n])):
        if missing <= 0:
            break
        if counts[name] < sizes[name]:
            counts[name] += 1
            missing -= 1
    return counts


def _counts(
    shapes: Mapping[str, Shape], density: float, distribution: str, erk_power_scale: float, fc_density: float | None
) -> dict[str, int]:
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    densities = solve_densities(shapes, density, distribution, erk_power_scale, fc_density)
    budget = min(density, 1.0) * sum(sizes.values())
    # The targets add up to the budget except where a distribution leaves it (uniform_plus, or an
    # erk_plus whose fixed classifier leaves more than its other layers can hold): then the rounded
    # sum of the targets is the total.
    planned = sum(min(densities[n], 1.0) * sizes[n] for n in sizes)
    total = math.floor(budget + 0.5) if abs(planned - budget) <= 1e-6 * max(1.0, budget) else None  # float error only
    return apportion(sizes, densities, total)


def smallest_workable_density(
    shapes: Mapping[str, Shape], distribution: str, erk_power_scale: float = 1.0, fc_density: float | None = None
) -> float | None:
    """The smallest density (rounded up to 4 significant digits) that leaves every layer a weight;
    None where no density does (a plus distribution's fixed classifier density is too low for it).

    Defined on the real-valued targets (every layer's ``d_l * N_l >= 1``), not on the rounded
    counts: the targets grow monotonically with the density, so every density from here up works.
    Largest-remainder rounding is not monotonic (a layer at 0.3 of a weight can win the spare
    weight at one density and lose it at a slightly higher one), so the rounded counts could not
    give a threshold that is safe to recommend.
    """
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}

    def works(d: float) -> bool:
        try:
            real = solve_densities(shapes, d, distribution, erk_power_scale, fc_density)
        except ConfigError:  # a plus distribution's fixed layers take more than the budget
            return False
        return all(min(real[n], 1.0) * sizes[n] >= 1 for n in shapes)

    if not works(1.0):
        return None
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    digits = 3 - math.floor(math.log10(hi))
    shown = math.ceil(hi * 10**digits) / 10**digits
    while not works(shown) and shown < 1.0:
        shown += 10**-digits
    return round(min(shown, 1.0), digits)


def layer_nnz(
    shapes: Mapping[str, Shape],
    density: float,
    distribution: str = "erk",
    erk_power_scale: float = 1.0,
    config_prefix: str = "sparsity",
    fc_density: float | None = None,
) -> dict[str, int]:
    """Exact non-zero count per layer. A layer that would keep no weight is a ConfigError."""
    counts = _counts(shapes, density, distribution, erk_power_scale, fc_density)
    empty = [name for name, n in counts.items() if n < 1]
    if empty:
        name = empty[0]
        smallest = smallest_workable_density(shapes, distribution, erk_power_scale, fc_density)
        fix = (
            f"density >= {smallest} for this model" if smallest is not None else f"a higher {config_prefix}.fc_density"
        )
        raise ConfigError(
            f"{config_prefix}.density",
            f"{density} leaves layer {name!r} ({math.prod(shapes[name])} weights) with no weight under {distribution}",
            fix,
        )
    return counts


def weight_shapes(layers: Mapping[str, nn.Module]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(module.weight.shape) for name, module in layers.items()}


def layer_densities(
    model: nn.Module,
    density: float,
    distribution: str = "erk",
    erk_power_scale: float = 1.0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    dense_first_layer: bool = False,
    dense_last_layer: bool = False,
    all_layers: bool = False,
    fc_density: float | None = None,
    dense_first_conv: bool = False,
) -> dict[str, float]:
    """The exact density (non-zeros / weights) each layer of ``model`` would get, without building masks.

    ``all_layers=True`` also lists the conv/linear layers kept dense by option, at 1.0.
    """
    layers = select_layers(
        model, include, exclude, dense_first_layer, dense_last_layer, dense_first_conv=dense_first_conv
    )
    shapes = weight_shapes(layers)
    counts = layer_nnz(shapes, density, distribution, erk_power_scale, fc_density=fc_density)
    sparse = {name: counts[name] / math.prod(shapes[name]) for name in shapes}
    if not all_layers:
        return sparse
    return {name: sparse.get(name, 1.0) for name in prunable_layers(model)}
