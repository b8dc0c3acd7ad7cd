"""``csr`` executor: torch.sparse CSR (MKL on the CPU) for Linear layers, no extra dependency.

- forward: ``y = (W_csr @ x^T)^T + b``;
- input gradient: ``gx = (W^T_csr @ gy^T)^T`` through the transposed CSR of the plan;
- weight gradient at the active positions only: ``torch.sparse.sampled_addmm`` (SDDMM) on the
  plan's pattern, or the dense ``gy^T x`` gathered at the active positions on steps where an
  update rule needs the dense gradient anyway (RigL's update step, momentum growth, TDM).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# torch.sparse CSR warns that it is "beta" on first use; the equivalence tests pin its results.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class CSRExecutor:
    name = "csr"

    def unsupported(self, layer: nn.Module) -> str | None:
        if isinstance(layer, nn.Linear):
            return None
        return (
            f"{type(layer).__name__}: the csr kernels are for Linear layers (im2col + CSR convolutions lose to dense)"
        )

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, shape[-1]).to(layer.values.dtype)
        y = _CSRLinear.apply(x2d, layer.values, layer.bias, layer, layer.wants_dense_grad())
        return y.reshape(*shape[:-1], y.shape[-1])


def csr_matrix(plan, values: torch.Tensor) -> torch.Tensor:
    crow, col = plan.csr()
    return torch.sparse_csr_tensor(crow, col, values, plan.shape, check_invariants=False)


def csr_forward(plan, values: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    """(B, out) = x2d @ W^T with W the plan's CSR matrix."""
    return torch.sparse.mm(csr_matrix(plan, values), x2d.t()).t()


class _CSRLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, values, bias, layer, dense_grad):
        plan = layer.plan
        y = csr_forward(plan, values, x2d)
        if bias is not None:
            y = y + bias
        ctx.plan, ctx.layer, ctx.dense_grad = plan, layer, dense_grad
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x2d, values)
        return y

    @staticmethod
    def backward(ctx, gy):
        x2d, values = ctx.saved_tensors
        plan = ctx.plan
        gx = gvalues = gbias = None
        if ctx.needs_input_grad[0]:
            crow_t, col_t, perm = plan.csr_transposed()
            w_t = torch.sparse_csr_tensor(
                crow_t, col_t, values[perm], (plan.shape[1], plan.shape[0]), check_invariants=False
            )
            gx = torch.sparse.mm(w_t, gy.t()).t()
        if ctx.needs_input_grad[1]:
            if ctx.dense_grad:
                dense = gy.t() @ x2d
                ctx.layer.add_dense_grad(dense, owned=True)
                gvalues = plan.gather(dense)
            else:
                pattern = csr_matrix(plan, values.new_zeros(plan.nnz))
                gvalues = torch.sparse.sampled_addmm(pattern, gy.t().contiguous(), x2d, beta=0.0).values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gbias = gy.sum(0)
        return gx, gvalues, gbias, None, None
