"""Typed schemas for the config groups users edit most.

Each YAML option of these groups extends its schema (``defaults: [/schema/<group>/<name>@_here_]``),
so Hydra rejects a wrong type (``optimizer.lr=abc``) or an unknown key (``+optimizer.lrr=1``)
while composing, before any work starts, and names the key. Enums name the allowed values.
Range checks that types cannot express live in ``validate.py``.

This module must stay import-light (no torch): it runs on every ``python train.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore


# -- optimizers (partials completed with the model's parameters) ----------------------------------
@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class AdadeltaConfig:
    _target_: str = "torch.optim.Adadelta"
    _partial_: bool = True
    lr: float = 1.0
    rho: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.0


@dataclass
class OptimizerGroupsConfig:
    """Which parameters are exempt from weight decay (``sparseforge.utils.param_groups``)."""

    _target_: str = "sparseforge.utils.param_groups.WeightDecayGroups"
    no_decay: List[str] = field(default_factory=list)


# -- learning-rate schedulers --------------------------------------------------------------------
@dataclass
class CosineLRConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int = 1
    eta_min: float = 0.0


@dataclass
class MultiStepLRConfig:
    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    _partial_: bool = True
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class WarmupCosineLRConfig:
    _target_: str = "sparseforge.utils.lr_schedules.warmup_cosine"
    _partial_: bool = True
    total: int = 1
    warmup_fraction: float = 0.05
    warmup_start_factor: float = 1e-3
    eta_min: float = 0.0


# -- data and scenario ---------------------------------------------------------------------------
@dataclass
class DataConfig:
    _target_: str = "sparseforge.lightning.datamodule.ContinualDataModule"
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    pin_memory: bool = False
    drop_last: bool = False
    seed: int = "${seed}"  # type: ignore[assignment]
    batch_transform: Optional[Any] = None  # e.g. timm.data.Mixup as a partial (num_classes added)
    val_fraction: float = 0.0  # held out of the training examples per class; > 0: best-validation model selection


@dataclass
class IIDScenarioConfig:
    _target_: str = "sparseforge.continual.scenarios.IID"
    epochs_per_task: int = 1
    online: bool = False  # task-free: one pass, boundaries hidden from the method (docs/continual.md)


@dataclass
class ClassILScenarioConfig:
    _target_: str = "sparseforge.continual.scenarios.ClassIncremental"
    n_tasks: int = 5
    epochs_per_task: int = 1
    class_order: Optional[Any] = None  # null | natural | random | [list of classes]
    order_seed: Optional[int] = None
    task_sizes: Optional[List[int]] = None
    train_per_task: Optional[int] = None  # null: every training example; N: a class-balanced subset per task
    subset_seed: int = 0  # seeds that subset (not the run seed: every run trains on the same examples)
    online: bool = False


@dataclass
class TaskILScenarioConfig(ClassILScenarioConfig):
    _target_: str = "sparseforge.continual.scenarios.TaskIncremental"


@dataclass
class BlurryScenarioConfig:
    _target_: str = "sparseforge.continual.scenarios.Blurry"
    class_per_episode: int = 3
    p_novelty: float = 0.3
    p_sample: float = 1.0
    epochs_per_task: int = 1
    order_seed: Optional[int] = None
    online: bool = False


@dataclass
class DomainILScenarioConfig:
    _target_: str = "sparseforge.continual.scenarios.DomainIncremental"
    n_tasks: int = 20
    epochs_per_task: int = 1
    # A partial of a sparseforge.data.task_transforms.TaskTransform (n_tasks, image_shape, seed added)
    task_transform: Optional[Any] = None
    transform_seed: Optional[int] = None  # null: the run seed
    online: bool = False


@dataclass
class TaskLoopConfig:
    _target_: str = "sparseforge.lightning.continual_loop.ContinualLoop"
    eval_batch_size: int = "${data.eval_batch_size}"  # type: ignore[assignment]
    eval_limit_batches: Optional[int] = None
    eval_every_n_epochs: Optional[int] = None
    reset_optimizer_per_task: bool = True
    forward_transfer: bool = False  # also evaluate the untrained model and the next task (FWT)
    keep_task_checkpoints: bool = False  # checkpoints/task_<t>.ckpt after every task, besides last.ckpt
    heatmap: bool = True  # acc_matrix.png in the run directory


# -- N:M sparsity (configs/sparsity/nm.yaml; see sparseforge.sparsity.nm) --------------------------
class NMMode(str, Enum):
    ste = "ste"
    srste = "srste"
    mdgf = "mdgf"
    sdgf = "sdgf"


class NMMaskDecay(str, Enum):
    linear = "linear"
    exponential = "exponential"
    staircase = "staircase"  # ours; upstream's STEP decay is mode=ste


class NMDecayBackward(str, Enum):
    ste = "ste"
    autograd = "autograd"


class NMStructureDecay(str, Enum):
    stepwise = "stepwise"
    geometric = "geometric"
    densify = "densify"


class NMSparseDim(str, Enum):
    row = "row"  # groups of M along the input dimension (PGF's ROW)
    col = "col"  # groups of M along the output dimension (PGF's COL, its Swin-V2 recipe)


class NMIndivisible(str, Enum):
    error = "error"
    dense = "dense"


class NMClock(str, Enum):
    step = "step"
    epoch = "epoch"


@dataclass
class NMSRSTEOptions:
    lambda_w: float = 2e-4


@dataclass
class NMMdGfOptions:
    decay: NMMaskDecay = NMMaskDecay.exponential
    end_fraction: float = 1.0
    rate: float = 10.0
    coef_per_step: Optional[float] = None
    levels: int = 4
    backward: NMDecayBackward = NMDecayBackward.ste


@dataclass
class NMSdGfOptions:
    structure: NMStructureDecay = NMStructureDecay.stepwise
    finetune_fraction: float = 0.0


@dataclass
class NMSparsityConfig:
    _target_: str = "sparseforge.lightning.nm_sparsity.NMSparsityCallback"
    n: int = 2
    m: int = 4
    mode: NMMode = NMMode.srste
    sparse_dim: NMSparseDim = NMSparseDim.row
    include: Optional[List[str]] = field(default_factory=lambda: ["blocks.*.mlp.fc1", "blocks.*.mlp.fc2"])
    exclude: Optional[List[str]] = None
    dense_first_layer: bool = False
    dense_last_layer: bool = False
    indivisible: NMIndivisible = NMIndivisible.error
    clock: NMClock = NMClock.step
    dense_fraction: float = 0.0
    srste: NMSRSTEOptions = field(default_factory=NMSRSTEOptions)
    mdgf: NMMdGfOptions = field(default_factory=NMMdGfOptions)
    sdgf: NMSdGfOptions = field(default_factory=NMSdGfOptions)
    export: bool = True


# -- trainer -------------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    _target_: str = "lightning.pytorch.Trainer"
    default_root_dir: str = "${paths.output_dir}"
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_epochs: Optional[int] = None  # null: n_tasks x scenario.epochs_per_task
    max_steps: int = -1
    max_time: Optional[str] = None  # "DD:HH:MM:SS"; a run it stops is "stopped_early", resumable
    limit_train_batches: Optional[Any] = None
    fast_dev_run: Any = False
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = 1
    deterministic: Any = False
    benchmark: Optional[bool] = None
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    num_sanity_val_steps: int = 0
    use_distributed_sampler: bool = True


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for group, name, node in [
        ("optimizer", "sgd", SGDConfig),
        ("optimizer", "adam", AdamConfig),
        ("optimizer", "adamw", AdamWConfig),
        ("optimizer", "adadelta", AdadeltaConfig),
        ("optimizer_groups", "default", OptimizerGroupsConfig),
        ("lr_scheduler", "cosine", CosineLRConfig),
        ("lr_scheduler", "multistep", MultiStepLRConfig),
        ("lr_scheduler", "warmup_cosine", WarmupCosineLRConfig),
        ("sparsity", "nm", NMSparsityConfig),
        ("data", "default", DataConfig),
        ("scenario", "iid", IIDScenarioConfig),
        ("scenario", "class_il", ClassILScenarioConfig),
        ("scenario", "task_il", TaskILScenarioConfig),
        ("scenario", "blurry", BlurryScenarioConfig),
        ("scenario", "domain_il", DomainILScenarioConfig),
        ("task_loop", "default", TaskLoopConfig),
        ("trainer", "default", TrainerConfig),
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node)
