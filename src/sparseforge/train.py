"""The training entry point: ``train(cfg) -> metrics`` and the Hydra ``main``.

``train`` builds every component from the config (each group maps 1:1 to a constructor), runs
the pre-flight checks (every config value first, then the data on disk and the scenario split)
before anything is written, fits, and writes ``summary.json`` into the run directory, also when
the run fails or is interrupted. One process at a time owns a run directory (``utils/run_lock``).

Heavy imports (torch, Lightning) happen inside the functions so ``--help`` and config errors
come back fast.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from sparseforge.config import config_dir
from sparseforge.errors import ConfigError, SparseforgeError
from sparseforge.utils.run_lock import LOCK_NAME, launched_as_rank_zero

log = logging.getLogger("sparseforge")


@dataclass
class Run:
    """Everything ``train`` built, before fitting."""

    cfg: DictConfig
    run_dir: Path
    datamodule: Any
    method: Any
    trainer: Any
    resume: Any  # lightning.checkpoint_io.ResumePoint | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ckpt_path(self) -> str | None:
        return str(self.resume.path) if self.resume is not None else None


def _is_rank_zero() -> bool:
    return launched_as_rank_zero()


def _precision_for(trainer_cfg: DictConfig) -> Any:
    """Fail early on a GPU config without a GPU; fall back from bf16 where it is unsupported."""
    import torch

    precision = trainer_cfg.precision
    if str(precision) == "auto":  # hardware=auto: mixed precision on a GPU, full precision on the CPU
        if trainer_cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    if trainer_cfg.accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "hardware", "a GPU setting was chosen but no CUDA GPU is visible", "hardware=cpu or ddp_cpu"
            )
        if str(precision).startswith("bf16") and not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bf16: using 16-mixed precision")
            return "16-mixed"
    return precision


def make(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose config mistakes come back as one ConfigError line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, SparseforgeError):
            raise cause from None
        # wrong or missing constructor arguments; values Lightning's constructors refuse
        if isinstance(cause, (TypeError, ValueError, MisconfigurationException)):
            raise ConfigError(key, str(cause).splitlines()[0]) from None
        if isinstance(cause, ImportError):  # an optional package (logger=tensorboard without tensorboard)
            raise ConfigError(key, f"needs a package that is not installed: {str(cause).splitlines()[0]}") from None
        raise


def _check_partial(factory: Any, key: str, **kwargs: Any) -> None:
    """Call an optimizer/scheduler partial once on a dummy so bad arguments fail before training."""
    try:
        factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, str(exc).splitlines()[0]) from None


def build(cfg: DictConfig, on_config_checked: Callable[[], None] | None = None) -> Run:
    """Instantiate everything and run the pre-flight checks. Raises SparseforgeError on bad input.

    Every constructor runs before any data is read (datasets load lazily), so a config mistake is
    reported before a missing or broken dataset; ``on_config_checked`` runs in between (the CLI
    prints the config tree there).
    """
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks.progress import ProgressBar

    from sparseforge.config.validate import validate
    from sparseforge.lightning.best_validation import BestValidation
    from sparseforge.lightning.checkpoint_io import AtomicCheckpointIO, CheckpointCommits, find_resume_checkpoint
    from sparseforge.lightning.csv_log import CSVLogger, CSVLogPosition
    from sparseforge.lightning.lean_step import install_lean_optimization
    from sparseforge.lightning.metric_refresh import install_metric_refresh_skip
    from sparseforge.lightning.nonfinite_loss import NonFiniteLossGuard
    from sparseforge.lightning.profiler import NoProfiler, install_callback_dispatch
    from sparseforge.lightning.progress import progress_bar
    from sparseforge.lightning.reproducibility import RNGStateCallback
    from sparseforge.lightning.result_moves import install_result_move_skip
    from sparseforge.lightning.train_metrics import TrainMetricsForSummary
    from sparseforge.utils.allocator import configure_cpu_allocator

    validate(cfg)
    install_callback_dispatch()  # callbacks are called only at the hooks they implement
    install_result_move_skip()  # self.log moves nothing that is already on its device
    install_metric_refresh_skip()  # the trainer's metrics are rebuilt after a batch that logged
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    configure_cpu_allocator(cfg.get("cpu_allocator", "system"))
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)

    # -- the config: every constructor, no data read yet -------------------------------------------
    dataset = make(cfg.dataset, "dataset")
    scenario = make(cfg.scenario, "scenario")
    datamodule = make(cfg.data, "data", dataset=dataset, scenario=scenario)
    model = make(
        cfg.model, "model", num_classes=dataset.num_classes, in_chans=dataset.in_chans, image_size=dataset.image_size
    )
    optimizer = make(cfg.optimizer, "optimizer")
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    _check_partial(optimizer, "optimizer", params=probe.param_groups[0]["params"])
    lr_scheduler = make(cfg.lr_scheduler, "lr_scheduler") if cfg.get("lr_scheduler") else None
    if lr_scheduler is not None:
        _check_partial(lr_scheduler, "lr_scheduler", optimizer=probe)
    groups = make(cfg.optimizer_groups, "optimizer_groups") if cfg.get("optimizer_groups") else None
    loss = {"loss": make(cfg.loss, "loss")} if cfg.get("loss") else {}  # null: cross-entropy
    method = make(
        cfg.method,
        "method",
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        optimizer_groups=groups,
        **loss,
    )
    method.check_stream(datamodule)  # online stream, task-IL, soft targets: no data needed

    callbacks = [
        make(cfg.task_loop, "task_loop"),
        BestValidation(),  # inert unless data.val_fraction > 0
        RNGStateCallback(),
        NonFiniteLossGuard(cfg.nonfinite_loss),
    ]
    if cfg.sparsity.get("_target_"):
        sparsity = make(cfg.sparsity, "sparsity")
        if hasattr(sparsity, "preflight"):  # model-dependent checks (which layers, their shapes) before any work
            sparsity.preflight(method)
        callbacks.append(sparsity)
    callbacks += [make(c, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c]
    callbacks.append(TrainMetricsForSummary())
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(progress_bar())  # Lightning's default bar, redrawn at most 10 times a second
    loggers = [make(c, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c]
    if any(isinstance(lg, CSVLogger) for lg in loggers):
        callbacks.append(CSVLogPosition())
    if not loggers:  # logger=none: LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]

    checkpoint_io = AtomicCheckpointIO()
    callbacks.append(CheckpointCommits(checkpoint_io))
    plugins = [checkpoint_io]
    if cfg.get("slurm_environment"):  # who requeues a SLURM job: see configs/train.yaml
        environment = make(cfg.slurm_environment, "slurm_environment")
        plugins += [environment] if environment is not None else []
    trainer_cfg = cfg.trainer
    trainer = make(
        trainer_cfg,
        "trainer",
        max_epochs=trainer_cfg.max_epochs if trainer_cfg.max_epochs is not None else 1,  # set below when null
        precision=_precision_for(trainer_cfg),
        callbacks=callbacks,
        logger=loggers or False,
        plugins=plugins,
        profiler=NoProfiler(),
        reload_dataloaders_every_n_epochs=1,
        limit_val_batches=0,
    )
    install_lean_optimization(trainer)  # Lightning's optimizer step without its do-nothing layers
    resume = find_resume_checkpoint(cfg.get("ckpt_path"), run_dir, tidy=_is_rank_zero())
    if on_config_checked is not None:
        on_config_checked()

    # -- the data ---------------------------------------------------------------------------------
    datamodule.setup("fit")  # loads the data and cuts the tasks: missing data fails here
    method.check_setup(datamodule)  # e.g. task-IL support, buffer size against the data
    if trainer_cfg.max_epochs is None:  # every task's epochs
        trainer.fit_loop.max_epochs = datamodule.total_epochs
    return Run(cfg, run_dir, datamodule, method, trainer, resume)


def collect_summary(run: Run) -> dict[str, Any]:
    """Merge the summary sections every callback and the method contribute, and the run's peak
    memory (host and GPU, ``utils/memory.py``)."""
    from sparseforge.utils.memory import peak_memory

    sections: dict[str, Any] = {"metrics": {}, "memory": peak_memory(run.extra.get("host_peak_reset", False))}
    for part in [*run.trainer.callbacks, run.method]:
        contribute = getattr(part, "summary_section", None)
        if contribute is None:
            continue
        for key, value in (contribute(run.trainer) or {}).items():
            if key == "metrics":
                sections["metrics"].update(value)
            else:
                sections[key] = value
    return sections


def _remove_fresh_run_dir(run_dir: Path, stop_at: Path | None = None) -> None:
    """After a pre-flight failure, delete the run directory if this job only just created it,
    and the parents (``outputs/runs/``...) it leaves empty, up to ``stop_at``."""
    if not run_dir.is_dir() or (run_dir / "checkpoints").exists() or (run_dir / "summary.json").exists():
        return
    if all(p.name in (".hydra", LOCK_NAME) or p.suffix == ".log" for p in run_dir.iterdir()):
        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.resolve().parent
        stop = stop_at.resolve() if stop_at is not None else None
        while stop is not None and parent != stop and stop in parent.parents:
            try:
                parent.rmdir()  # only succeeds while empty
            except OSError:
                break
            parent = parent.parent


def train(cfg: DictConfig, on_config_checked: Callable[[], None] | None = None) -> dict[str, float]:
    """Train from a composed config; write summary.json; return the final metrics."""
    from sparseforge.config.points import completed_summary
    from sparseforge.utils.memory import reset_peak_memory
    from sparseforge.utils.run_lock import claim_run_dir

    start = time.time()
    run_dir = Path(cfg.paths.output_dir)
    finished = completed_summary(run_dir) if cfg.get("ckpt_path") == "auto" else None
    if finished is not None:  # resuming a finished run (a rerun sweep): nothing is left to train
        log.info(f"{run_dir} already completed: skipped (ckpt_path=null retrains it)")
        train.last_summary = finished
        return finished.get("metrics", {})
    lock = claim_run_dir(run_dir) if _is_rank_zero() else None  # RunInUseError: someone else's
    host_peak_reset = reset_peak_memory()  # the peaks in summary.json are this run's own
    try:
        return _train_in(run_dir, cfg, start, on_config_checked, host_peak_reset)
    finally:
        if lock is not None:
            lock.release()


def _write_summary(run_dir: Path, summary: dict[str, Any], failure: BaseException | None) -> None:
    """Write summary.json; if that fails too while a run is failing, say so without hiding why."""
    from sparseforge.utils.io import atomic_write_json

    try:
        atomic_write_json(run_dir / "summary.json", summary)
    except (OSError, SparseforgeError) as exc:  # a full disk (DiskFullError), a vanished folder
        if failure is None:
            raise
        log.error(f"could not record status {summary['status']!r} in summary.json: {exc}")


def _train_in(
    run_dir: Path, cfg: DictConfig, start: float, on_config_checked, host_peak_reset: bool
) -> dict[str, float]:
    from sparseforge.errors import DiskFullError
    from sparseforge.lightning.csv_log import continue_logs_from
    from sparseforge.lightning.interrupts import exit_code_for, is_interruption
    from sparseforge.lightning.loggers import finish_wandb
    from sparseforge.utils.io import is_disk_full

    rank_zero = _is_rank_zero()
    try:
        run = build(cfg, on_config_checked)
    except SparseforgeError:
        if rank_zero:
            _remove_fresh_run_dir(run_dir, stop_at=Path(cfg.paths.root_dir))
        raise
    except BaseException as exc:  # a bug, not a user error: keep the run dir and say what failed
        if rank_zero:
            failed = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "run_dir": str(run_dir),
                "seed": cfg.get("seed"),
                "metrics": {},
                "wall_time_s": time.time() - start,
                "n_params": None,
                "config": OmegaConf.to_container(cfg, resolve=False),
            }
            _write_summary(run_dir, failed, exc)
        raise

    run.extra["host_peak_reset"] = host_peak_reset
    resolved = OmegaConf.to_container(cfg, resolve=True)
    summary: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run_dir),
        "seed": cfg.seed,
        "metrics": {},  # the contract's keys exist in every state; filled in when the run completes
        "config": resolved,
        "n_params": sum(p.numel() for p in run.method.model.parameters()),
        "resumed_from": run.ckpt_path,
        "started_at": start,
        "pid": os.getpid(),  # with the lock: tells a killed run (status still "running") from a live one
        "host": socket.gethostname(),
    }
    if rank_zero:
        _write_summary(run_dir, summary, None)
    failure: BaseException | None = None
    try:
        if run.resume is not None:
            continue_logs_from(run.trainer.loggers, run.resume.global_step, run.resume.csv_log_rows)
        for logger in run.trainer.loggers:
            logger.log_hyperparams(resolved)
        run.trainer.fit(run.method, datamodule=run.datamodule, ckpt_path=run.ckpt_path)
        summary.update(collect_summary(run))
        summary["status"] = "completed" if _ran_every_epoch(run.trainer) else "stopped_early"
        return summary["metrics"]
    except BaseException as exc:
        failure = exc
        # A preemption or Ctrl-C is not a failure: the run resumes from its last checkpoint with
        # ckpt_path=auto. It still exits non-zero (interrupts.py).
        summary["status"] = "interrupted" if is_interruption(exc) else "failed"
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):  # e.g. a log file, written in place
            failure = DiskFullError(getattr(exc, "filename", None) or run_dir)
        summary["error"] = f"{type(failure).__name__}: {failure}"
        code = exit_code_for(exc)
        if code is not None:
            raise SystemExit(code) from exc
        if failure is not exc:
            raise failure from exc
        raise
    finally:
        summary["wall_time_s"] = time.time() - start
        summary["finished_at"] = time.time()
        if rank_zero and run.trainer.is_global_zero:
            _write_summary(run_dir, summary, failure)
        finish_wandb(exit_code=0 if summary["status"] == "completed" else 1)
        run.extra["summary"] = summary
        train.last_summary = summary  # for callers that want everything (tests, the CLI table)


train.last_summary = None


def _ran_every_epoch(trainer) -> bool:
    """False when max_time, max_steps or a callback stopped fit before its last epoch.

    Such a run is not "completed": ckpt_path=auto resumes it instead of skipping it, and sweep
    aggregation leaves it out. fast_dev_run is a complete run by definition.
    """
    return bool(trainer.fast_dev_run) or trainer.current_epoch >= trainer.max_epochs


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from sparseforge.utils.logging import tidy_console

    def show_config() -> None:  # once every config value passed its checks
        if cfg.get("print_config") and _is_rank_zero():
            from sparseforge.utils.rich_utils import print_config_tree

            print_config_tree(cfg)

    tidy_console()
    try:
        metrics = train(cfg, on_config_checked=show_config)
    except SparseforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _end_sweep_point_or_exit(cfg, exc)
    if _is_rank_zero() and train.last_summary is not None:
        from sparseforge.utils.rich_utils import print_results

        print_results(train.last_summary)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return float(value) if value is not None else None


def _end_sweep_point_or_exit(cfg: DictConfig, exc: SparseforgeError) -> None:
    """A single run exits with the error's status. In a multirun the error is the point's result:
    Hydra's launcher records it and runs the other points, and the sweep ends non-zero."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        from sparseforge.config.points import point_overrides
        from sparseforge.sweeps.plan import SweepPointFailed, describe

        point = describe(point_overrides(HydraConfig.get().overrides.task))
        raise SweepPointFailed(f"sweep point {point}: {exc}") from None
    sys.exit(exc.exit_code)


def main() -> None:
    """Console-script entry (``sparseforge-train``): the same as ``python train.py``."""
    from sparseforge.compose import register_all
    from sparseforge.config.hydra_errors import one_line_hydra_errors
    from sparseforge.config.overrides import normalise_overrides

    register_all()
    sys.argv[1:] = normalise_overrides(sys.argv[1:])
    with one_line_hydra_errors():  # an unknown key: one line with the closest valid key
        _hydra_main()


if __name__ == "__main__":
    main()
