"""Inference export: a trained sparse model with CSR Linear layers, checked against the masked model.

    exported, report = export_csr(model, masks, example_input)
    torch.save(exported, "csr_model.pt")

Each masked ``nn.Linear`` (plain or compressed) becomes a :class:`CSRLinear` whose CSR structure
comes from the layer's **mask** (a weight at exactly 0 inside the mask stays in the structure),
with forward ``(W_csr @ x^T)^T + b`` through torch.sparse (MKL on the CPU). Convolutions and
layers without a mask stay as they are. The exported model's output is compared with the masked
model's on ``example_input``; a mismatch beyond float tolerance raises.

``sparseforge-export RUN_DIR`` does the same for a finished run (model rebuilt from its config,
weights and masks from ``checkpoints/last.ckpt``) and writes ``RUN_DIR/csr_export.pt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseforge.sparsity.backends.csr import csr_forward
from sparseforge.sparsity.backends.layers import CompressedWeight, decompress, reference_forward
from sparseforge.sparsity.backends.plan import Plan

# attributes of a compressed layer that tie it to its training run, not to its function
_TRAINING_LINKS = ("chooser", "dense_grad_wanted", "on_new_plan", "optimizer_ref")


class CSRLinear(nn.Module):
    """An inference-only Linear layer holding its weight as CSR (indices from a mask)."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        plan = Plan(mask.to(weight.device))
        crow, col = plan.csr()
        self.register_buffer("crow_indices", crow.clone())
        self.register_buffer("col_indices", col.clone())
        self.register_buffer("values", plan.gather(weight.detach()).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._plan = plan

    @classmethod
    def from_linear(cls, layer: nn.Linear, mask: torch.Tensor) -> CSRLinear:
        return cls(layer.weight.detach(), mask, layer.bias)

    def _csr_plan(self) -> Plan:
        plan = self.__dict__.get("_plan")
        if plan is None or plan.device != self.values.device:  # after torch.load or .to(): rebuild
            mask = torch.zeros(self.out_features * self.in_features, dtype=torch.bool, device=self.values.device)
            rows = torch.repeat_interleave(
                torch.arange(self.out_features, device=mask.device), self.crow_indices.diff().long()
            )
            mask[rows * self.in_features + self.col_indices.long()] = True
            plan = Plan(mask.view(self.out_features, self.in_features))
            self.__dict__["_plan"] = plan
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = csr_forward(self._csr_plan(), self.values, x.reshape(-1, shape[-1]).to(self.values.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.values.numel()}"


def _plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which compressed layers are plain dense layers again."""
    stashed = {}
    for name, module in model.named_modules():
        if isinstance(module, CompressedWeight):
            stashed[name] = {a: module.__dict__.get(a) for a in _TRAINING_LINKS}
            for a in _TRAINING_LINKS:
                module.__dict__[a] = None
    try:
        plain = copy.deepcopy(model)
    finally:
        for name, links in stashed.items():
            model.get_submodule(name).__dict__.update(links)
    for name in stashed:
        decompress(plain.get_submodule(name))
    return plain


@torch.no_grad()
def export_csr(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    example_input: torch.Tensor | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> tuple[nn.Module, dict[str, Any]]:
    """(a copy of ``model`` with CSR Linear layers, a report). ``model`` itself is not modified."""
    exported = _plain_copy(model).eval()
    layers: dict[str, str] = {}
    for name, mask in masks.items():
        layer = exported.get_submodule(name)
        if type(layer) is not nn.Linear:
            layers[name] = f"kept dense ({type(layer).__name__}: CSR export is for Linear layers)"
            continue
        parent_name, _, child = name.rpartition(".")
        parent = exported.get_submodule(parent_name) if parent_name else exported
        setattr(parent, child, CSRLinear.from_linear(layer, mask))
        layers[name] = f"csr ({int(mask.sum())} of {mask.numel()} weights)"
    report: dict[str, Any] = {"layers": layers}
    if example_input is not None:
        was_training = model.training
        model.eval()
        with reference_forward():  # compressed layers of the training model compute densely
            expected = model(example_input)
        model.train(was_training)
        got = exported(example_input)
        diff = float((got - expected).abs().max())
        report["max_abs_diff"] = diff
        if not torch.allclose(got, expected, rtol=rtol, atol=atol):
            raise RuntimeError(
                f"CSR export differs from the masked model by up to {diff:.3g} (rtol {rtol}, atol {atol})"
            )
    return exported, report


def export_run(run_dir: Path, batch: int = 64, out: Path | None = None) -> dict[str, Any]:
    """Export a finished run's model (config from summary.json, weights and masks from last.ckpt)."""
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = OmegaConf.create(summary["config"])
    dataset = get_class(cfg.dataset._target_)
    dims = {"num_classes": dataset.num_classes, "in_chans": dataset.in_chans, "image_size": dataset.image_size}
    model = instantiate(cfg.model, **dims)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    )
    [key] = [k for k in ckpt["callbacks"] if "SparsityCallback" in k]
    masks = ckpt["callbacks"][key]["masks"]["masks"]
    example = torch.randn(batch, dataset.in_chans, dataset.image_size, dataset.image_size)
    exported, report = export_csr(model, masks, example)
    out = out or run_dir / "csr_export.pt"
    torch.save(exported, out)
    report["file"] = str(out)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparseforge-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (summary.json, checkpoints/last.ckpt)")
    parser.add_argument("--batch", type=int, default=64, help="random inputs for the equality check")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/csr_export.pt")
    args = parser.parse_args(argv)
    try:
        report = export_run(args.run_dir, args.batch, args.out)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"sparseforge-export: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(report))


if __name__ == "__main__":
    main()
