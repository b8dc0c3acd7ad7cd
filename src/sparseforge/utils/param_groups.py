"""Which parameters get weight decay: optimizer parameter groups (config group ``optimizer_groups``).

``no_decay`` lists what is exempt, in timm's ``param_groups_weight_decay`` manner:

- ``bias``: every parameter named ``bias``;
- ``norm``: every parameter of a normalisation layer (BatchNorm, LayerNorm, GroupNorm, InstanceNorm,
  RMSNorm and their subclasses, timm's included);
- any other word: the parameters with that name, at any depth (``pos_embed`` matches
  ``model.pos_embed``; ``cls_token``, ``dist_token`` ...). A word that matches no parameter is an
  error naming it, since it is almost always a typo.

The exempt parameters form a group with ``weight_decay: 0``; the others keep the optimizer's own
``weight_decay``. With nothing exempt there is one plain list of parameters, as without groups.
RigL applies L2 to conv and linear kernels only: ``[bias, norm]``. timm's ViT recipe also exempts
the position embedding and class token: ``[bias, norm, pos_embed, cls_token]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparseforge.errors import ConfigError

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


class WeightDecayGroups:
    def __init__(self, no_decay: Sequence[str] = ()):
        self.no_decay = [str(word) for word in no_decay]

    def exempt(self, module: nn.Module) -> set[str]:
        """Names (as ``module.named_parameters()`` gives them) of the parameters without decay."""
        names = [name for name, _ in module.named_parameters()]
        out: set[str] = set()
        for word in self.no_decay:
            if word == "norm":
                matched = {
                    f"{prefix}.{name}" if prefix else name
                    for prefix, m in module.named_modules()
                    if isinstance(m, NORM_TYPES)
                    for name, _ in m.named_parameters(recurse=False)
                }
            else:
                matched = {n for n in names if n == word or n.endswith(f".{word}")}
                if not matched and word != "bias":
                    shown = ", ".join(n for n in names[:6]) + (", ..." if len(names) > 6 else "")
                    raise ConfigError(
                        "optimizer_groups.no_decay",
                        f"{word!r} matches no parameter",
                        f"bias, norm or names such as {shown}",
                    )
            out |= matched
        return out

    def param_groups(self, module: nn.Module) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
        """What to hand the optimizer: trainable parameters, split into decay / no-decay groups."""
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        exempt = self.exempt(module)
        if not any(n in exempt for n, _ in trainable):
            return [p for _, p in trainable]
        decay = [p for n, p in trainable if n not in exempt]
        no_decay = [p for n, p in trainable if n in exempt]
        groups: list[dict[str, Any]] = [{"params": no_decay, "weight_decay": 0.0}]
        return ([{"params": decay}] if decay else []) + groups
