"""``auto``: per layer, time each candidate kernel at the layer's real input and keep the fastest.

The first training forward of each compressed layer times every candidate (forward + backward,
the weight gradient at the active positions and the input gradient) on that very input, and
again whenever the layer's density has moved by more than 10% (relative) since its last choice.
All candidates read the same values tensor, so switching costs nothing. The choice is logged per
layer and reported in summary.json.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger("sparseforge")

REPEATS = 3  # timed runs per candidate after one warm-up; the fastest run counts
RETIME_DENSITY_CHANGE = 0.10


class AutoChooser:
    def __init__(self, candidates: dict[str, list], repeats: int = REPEATS):
        self.candidates = candidates
        self.repeats = repeats
        self.choices: dict[str, dict] = {}

    def __call__(self, layer, x: torch.Tensor) -> None:
        name = layer.sparse_name
        previous = self.choices.get(name)
        density = layer.plan.density
        if previous is not None and abs(density - previous["density"]) <= RETIME_DENSITY_CHANGE * previous["density"]:
            return
        # the sparse kernels are CPU kernels: on a GPU the dense ones are the only candidate
        candidates = [ex for ex in self.candidates[name] if x.device.type == "cpu" or ex.name == "dense"]
        timings = {ex.name: self._time(layer, ex, x) for ex in candidates} if len(candidates) > 1 else {}
        best = min(timings, key=timings.get) if timings else candidates[0].name
        layer.executor = next(ex for ex in candidates if ex.name == best)
        if best != "dense":  # the timing's dense buffers (two weight-sized tensors) are not needed
            from sparseforge.sparsity.backends.dense import release_buffers

            release_buffers(layer)
        self.choices[name] = {
            "executor": best,
            "density": density,
            "input_shape": list(x.shape),
            "ms": {k: round(v * 1e3, 3) for k, v in timings.items()},
            "timings": (previous or {}).get("timings", 0) + 1,
        }
        log.info(
            "sparsity.backend=auto: %s (density %.4f, input %s on %s) -> %s (fwd+bwd ms: %s)",
            name,
            density,
            tuple(x.shape),
            x.device.type,
            best,
            ", ".join(f"{k} {v * 1e3:.2f}" for k, v in timings.items()),
        )

    def _time(self, layer, executor, x: torch.Tensor) -> float:
        wanted, layer.dense_grad_wanted = layer.dense_grad_wanted, None  # no dense gradient while timing
        try:
            x = x.detach().requires_grad_(x.requires_grad)
            inputs = [layer.values] + ([x] if x.requires_grad else [])
            best = float("inf")
            for i in range(self.repeats + 1):
                start = time.perf_counter()
                y = executor.forward(layer, x)
                torch.autograd.grad(y, inputs, torch.ones_like(y))
                if i:  # the first run warms caches and builds the kernel's index structures
                    best = min(best, time.perf_counter() - start)
            return best
        finally:
            layer.dense_grad_wanted = wanted
