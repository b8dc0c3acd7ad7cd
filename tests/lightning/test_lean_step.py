"""The lean optimizer step and the skipped empty module hooks change nothing but the cost: the same
weights, hooks, order and progress as Lightning's own loop, and Lightning's loop wherever the
lean step's conditions do not hold."""

from __future__ import annotations

from collections import OrderedDict

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loops.optimization.automatic import _AutomaticOptimization
from lightning.pytorch.profilers import SimpleProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer import call as lightning_call
from lightning.pytorch.trainer.connectors.data_connector import _DataHookSelector

from sparseforge.lightning import lean_step, profiler
from sparseforge.lightning.profiler import NoProfiler, install_callback_dispatch
from sparseforge.train import build
from tests.helpers.cl import QUIET, one_thread
from tests.helpers.config import compose_config
from tests.helpers.lightning_trainer import bare_trainer

STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
)


class HookLog(pl.Callback):
    """Records every per-step hook, the module's current hook name, the step, and the gradients'
    and the weights' norms then."""

    def __init__(self):
        self.calls: list[tuple] = []

    def _record(self, hook, pl_module):
        grads = [p.grad.norm().item() for p in pl_module.parameters() if p.grad is not None]
        weights = [p.detach().norm().item() for p in pl_module.parameters()]
        self.calls.append((hook, pl_module._current_fx_name, pl_module.trainer.global_step, grads, weights))


for _hook in STEP_HOOKS:
    setattr(HookLog, _hook, lambda self, trainer, pl_module, *args, _hook=_hook: self._record(_hook, pl_module))


def fit(tmp_path, name: str, overrides: list[str], lean: bool, monkeypatch) -> dict:
    """One small fit (digits, MLP, 5 tasks, 4 batches each) with the lean step or Lightning's own."""
    for skipped in ("_EMPTY_STEP_HOOKS", "_IDENTITY_BATCH_HOOKS"):  # Lightning calls every module hook
        monkeypatch.setattr(profiler, skipped, dict(getattr(profiler, skipped)) if lean else {}, raising=True)
    if not lean:
        monkeypatch.setattr(profiler, "_clipping_does_nothing", lambda trainer, module: False)
    quiet = [o for o in QUIET if not o.startswith("sparsity=")]  # each case names its sparsity
    cfg = [
        *quiet,
        "scenario.n_tasks=5",
        "scenario.epochs_per_task=1",
        "trainer.limit_train_batches=4",
        "data.batch_size=16",
        *overrides,
    ]
    run = build(compose_config(cfg, output_dir=tmp_path / name))
    loop = run.trainer.fit_loop.epoch_loop
    assert isinstance(loop.automatic_optimization, lean_step.LeanAutomaticOptimization)
    if not lean:  # Lightning's own loop, with the same progress object
        stock = _AutomaticOptimization(run.trainer)
        stock.optim_progress = loop.automatic_optimization.optim_progress
        loop.automatic_optimization = stock
    log = HookLog()
    run.trainer.callbacks.append(log)
    with one_thread():
        run.trainer.fit(run.method, datamodule=run.datamodule)
    return {
        "weights": {k: v.clone() for k, v in run.method.state_dict().items()},
        "hooks": log.calls,
        "global_step": run.trainer.global_step,
        "progress": loop.automatic_optimization.optim_progress.state_dict(),
        "metrics": {k: float(v) for k, v in run.trainer.callback_metrics.items()},
    }


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=er", "sparsity=rigl", "sparsity.delta_t=4"],  # masks, gradient hooks, drop and grow
        ["method=derpp", "sparsity=dense"],
        ["method=finetune", "sparsity=dense", "trainer.gradient_clip_val=0.05"],  # clipping on the lean path
    ],
    ids=["er_rigl", "derpp", "finetune_clipped"],
)
def test_the_lean_step_gives_lightnings_weights_hooks_and_progress(tmp_path, monkeypatch, overrides):
    lean = fit(tmp_path, "lean", overrides, lean=True, monkeypatch=monkeypatch)
    stock = fit(tmp_path, "stock", overrides, lean=False, monkeypatch=monkeypatch)
    assert lean["global_step"] == stock["global_step"] == 20
    assert lean["progress"] == stock["progress"]
    assert lean["hooks"] == stock["hooks"]  # every hook, in order, with the same gradients
    assert lean["metrics"] == stock["metrics"]
    for name, value in stock["weights"].items():
        assert torch.equal(lean["weights"][name], value), name


def test_lightnings_loop_runs_where_the_lean_steps_conditions_fail(tmp_path, monkeypatch):
    """Gradient accumulation (and a module's own optimizer_step, an L-BFGS optimizer, another
    strategy or a gradient scaler) takes Lightning's own path."""
    taken: list[str] = []
    stock_run = _AutomaticOptimization.run

    def spy(self, *args, **kwargs):
        taken.append(type(self).__name__)
        return stock_run(self, *args, **kwargs)

    monkeypatch.setattr(_AutomaticOptimization, "run", spy)
    cfg = [
        *QUIET,
        "method=finetune",
        "scenario.n_tasks=1",
        "scenario.epochs_per_task=1",
        "trainer.limit_train_batches=4",
    ]
    run = build(compose_config([*cfg, "trainer.accumulate_grad_batches=2"], output_dir=tmp_path / "acc"))
    with one_thread():
        run.trainer.fit(run.method, datamodule=run.datamodule)
    assert taken == ["LeanAutomaticOptimization"] * 4  # each batch fell through to Lightning's run
    assert run.trainer.global_step == 2
    taken.clear()
    run = build(compose_config(cfg, output_dir=tmp_path / "plain"))
    with one_thread():
        run.trainer.fit(run.method, datamodule=run.datamodule)
    assert taken == [] and run.trainer.global_step == 4  # the lean path, not Lightning's run


def spy_on_hook_calls(monkeypatch, kind: str) -> list[str]:
    """The names of the module (``kind="MODULE"``) or strategy hooks that get called: through
    Lightning's own call (another profiler) or the untraced one (the no-op profiler)."""
    reached: list[str] = []
    lightnings, untraced = getattr(profiler, f"_CALL_{kind}_HOOK"), getattr(profiler, f"_RUN_{kind}_HOOK")

    def through_lightning(trainer, hook, *args, **kwargs):
        reached.append(hook)
        return lightnings(trainer, hook, *args, **kwargs)

    def untraced_call(trainer, *args, **kwargs):
        reached.append(args[1] if kind == "MODULE" else args[0])  # the module hook's args: module, hook, ...
        return untraced(trainer, *args, **kwargs)

    monkeypatch.setattr(profiler, f"_CALL_{kind}_HOOK", through_lightning)
    monkeypatch.setattr(profiler, f"_RUN_{kind}_HOOK", untraced_call)
    return reached


def _trainer(profiler_, module: pl.LightningModule) -> pl.Trainer:
    trainer = bare_trainer(profiler=profiler_)
    trainer.strategy.connect(module)
    return trainer


def test_empty_module_hooks_are_skipped_and_implemented_ones_called(monkeypatch):
    install_callback_dispatch()
    reached = spy_on_hook_calls(monkeypatch, "MODULE")

    class Backward(pl.LightningModule):
        called = 0

        def on_after_backward(self):
            type(self).called += 1

    plain = _trainer(NoProfiler(), pl.LightningModule())
    for hook in ("on_after_backward", "on_before_zero_grad"):
        assert lightning_call._call_lightning_module_hook(plain, hook) is None
    assert reached == []
    lightning_call._call_lightning_module_hook(plain, "on_train_epoch_end")  # not a per-step hook: as before
    assert reached == ["on_train_epoch_end"]

    own = _trainer(NoProfiler(), Backward())
    lightning_call._call_lightning_module_hook(own, "on_after_backward")
    assert Backward.called == 1 and reached[-1] == "on_after_backward"
    instance = pl.LightningModule()
    instance.on_before_zero_grad = lambda optimizer: reached.append("instance's own")
    lightning_call._call_lightning_module_hook(_trainer(NoProfiler(), instance), "on_before_zero_grad", None)
    assert reached[-1] == "instance's own"

    reached.clear()  # another profiler: every hook reaches Lightning, so a profile names them all
    lightning_call._call_lightning_module_hook(_trainer(SimpleProfiler(), pl.LightningModule()), "on_after_backward")
    assert reached == ["on_after_backward"]


def test_batch_transfer_hooks_left_as_defaults_return_the_batch_without_a_call(monkeypatch):
    install_callback_dispatch()
    reached = spy_on_hook_calls(monkeypatch, "MODULE")
    plain = _trainer(NoProfiler(), pl.LightningModule())
    batch = object()
    for hook in ("on_before_batch_transfer", "on_after_batch_transfer"):
        assert lightning_call._call_lightning_module_hook(plain, hook, batch, 0) is batch
        assert lightning_call._call_lightning_module_hook(plain, hook, batch=batch, dataloader_idx=0) is batch
    assert reached == []

    class Shifted(pl.LightningModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch + 1

    shifted = _trainer(NoProfiler(), Shifted())
    assert lightning_call._call_lightning_module_hook(shifted, "on_after_batch_transfer", 1, 0) == 2
    assert reached == ["on_after_batch_transfer"]


def test_the_clipping_hook_is_skipped_only_where_it_would_clip_nothing(monkeypatch):
    install_callback_dispatch()
    reached = spy_on_hook_calls(monkeypatch, "MODULE")

    def clip(module: pl.LightningModule, clip_val) -> torch.Tensor:
        trainer = bare_trainer(
            gradient_clip_val=clip_val,
        )
        trainer.strategy.connect(module)
        module.trainer = trainer
        weight = torch.nn.Parameter(torch.zeros(3))
        weight.grad = torch.tensor([3.0, 4.0, 0.0])
        optimizer = torch.optim.SGD([weight], lr=1.0)
        lightning_call._call_lightning_module_hook(
            trainer, "configure_gradient_clipping", optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=None
        )
        return weight.grad

    assert torch.equal(clip(pl.LightningModule(), None), torch.tensor([3.0, 4.0, 0.0]))
    assert torch.equal(clip(pl.LightningModule(), 0.0), torch.tensor([3.0, 4.0, 0.0]))
    assert reached == []  # nothing to clip: not called
    assert torch.allclose(clip(pl.LightningModule(), 1.0), torch.tensor([0.6, 0.8, 0.0]))
    assert reached == ["configure_gradient_clipping"]  # a clip value: Lightning clips

    class OwnClipping(pl.LightningModule):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="value")

    assert torch.equal(clip(OwnClipping(), None), torch.tensor([0.5, 0.5, 0.0]))  # its own rule, no clip value
    assert reached[-1] == "configure_gradient_clipping"


class _NoWeakReference:
    """A callable training step that cannot be weakly referenced (so it cannot be remembered)."""

    __slots__ = ("calls",)

    def __init__(self):
        self.calls = 0

    def __call__(self, batch, batch_idx):
        self.calls += 1


def test_training_step_gets_batch_idx_exactly_when_its_signature_takes_it():
    install_callback_dispatch()

    class WithIndex(pl.LightningModule):
        def training_step(self, batch, batch_idx):
            pass

    class WithoutIndex(pl.LightningModule):
        def training_step(self, batch):
            pass

    class AnyName(pl.LightningModule):
        def training_step(self, batch, i):  # Lightning: two arguments after self are batch, batch_idx
            pass

    class Varargs(pl.LightningModule):
        def training_step(self, *args):
            pass

    unweakrefable = pl.LightningModule()
    unweakrefable.training_step = _NoWeakReference()
    expected = {WithIndex(): True, WithoutIndex(): False, AnyName(): True, Varargs(): True, unweakrefable: True}
    for _ in range(2):  # remembered the first time, the same the second
        for module, takes_index in expected.items():
            loop = _trainer(NoProfiler(), module).fit_loop.epoch_loop
            kwargs = loop._build_kwargs(OrderedDict(), "batch", 7)
            assert kwargs == (OrderedDict(batch="batch", batch_idx=7) if takes_index else OrderedDict(batch="batch"))
    assert profiler._TAKES_BATCH_IDX[WithoutIndex.training_step] is False


def test_the_owner_of_a_batch_transfer_hook_is_looked_up_once_per_selector(monkeypatch):
    install_callback_dispatch()
    lookups: list[str] = []
    real = profiler._FIND_HOOK_OWNER
    monkeypatch.setattr(profiler, "_FIND_HOOK_OWNER", lambda self, hook: lookups.append(hook) or real(self, hook))

    class Data(pl.LightningDataModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch

    module, data = pl.LightningModule(), Data()
    selector = _DataHookSelector(module, data)
    for _ in range(3):
        assert selector.get_instance("on_after_batch_transfer") is data
        assert selector.get_instance("on_before_batch_transfer") is module
    assert lookups == ["on_after_batch_transfer", "on_before_batch_transfer"]
    assert _DataHookSelector(module, None).get_instance("on_after_batch_transfer") is module  # a new fit: asked again


class _Regression(pl.LightningModule):
    def __init__(self, schedule_every_step: bool):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.schedule_every_step = schedule_every_step

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
        if not self.schedule_every_step:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@pytest.mark.parametrize("schedule_every_step", [True, False])
def test_lightnings_scheduler_update_runs_only_for_a_run_with_a_scheduler(monkeypatch, schedule_every_step):
    install_callback_dispatch()
    updates: list[str] = []
    real = profiler._UPDATE_LR_SCHEDULERS
    monkeypatch.setattr(
        profiler,
        "_UPDATE_LR_SCHEDULERS",
        lambda loop, interval, plateau: updates.append(interval) or real(loop, interval, plateau),
    )
    module = _Regression(schedule_every_step)
    trainer = bare_trainer(
        max_steps=3,
    )
    data = torch.utils.data.TensorDataset(torch.randn(12, 2))
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if schedule_every_step:
        assert updates == ["step"] * 6 and lr == 0.5**3  # twice a batch (then plateau ones); stepped 3 times
    else:
        assert updates == [] and lr == 1.0


class _Validated(_Regression):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.layer(batch[0]).pow(2).mean())


@pytest.mark.parametrize("validates", [True, False])
def test_validation_runs_as_lightning_schedules_it_and_a_fit_without_it_is_not_asked(monkeypatch, validates):
    install_callback_dispatch()
    asked: list[int] = []
    real = profiler._SHOULD_CHECK_VAL
    monkeypatch.setattr(profiler, "_SHOULD_CHECK_VAL", lambda loop, fetcher: asked.append(1) or real(loop, fetcher))
    runs: list[int] = []

    class CountValidations(pl.Callback):
        def on_validation_start(self, trainer, pl_module):
            runs.append(trainer.global_step)

    trainer = bare_trainer(
        max_epochs=1,
        val_check_interval=2,
        num_sanity_val_steps=0,
        callbacks=[CountValidations()],
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 2)), batch_size=2)
    module = _Validated(False) if validates else _Regression(False)
    trainer.fit(module, loader, loader if validates else None)
    if validates:
        assert runs == [2, 4, 6] and len(asked) == 6  # after every second of the 6 batches
    else:
        assert runs == [] and asked == []


def test_the_strategys_empty_batch_start_hook_is_not_called_but_its_own_is(monkeypatch):
    install_callback_dispatch()
    reached = spy_on_hook_calls(monkeypatch, "STRATEGY")
    plain = _trainer(NoProfiler(), pl.LightningModule())
    assert lightning_call._call_strategy_hook(plain, "on_train_batch_start", "batch", 0) is None
    assert reached == []

    seen: list[tuple] = []

    class Watching(SingleDeviceStrategy):
        def on_train_batch_start(self, batch, batch_idx):
            seen.append((batch, batch_idx))

    watched = bare_trainer(strategy=Watching(torch.device("cpu")))
    watched.strategy.connect(pl.LightningModule())
    lightning_call._call_strategy_hook(watched, "on_train_batch_start", "batch", 3)
    assert seen == [("batch", 3)] and reached == ["on_train_batch_start"]


def test_hooks_called_untraced_keep_lightnings_hook_name_and_debug_trace(caplog):
    install_callback_dispatch()
    names: list[str] = []

    class Recording(pl.LightningModule):
        def on_train_epoch_end(self):
            names.append(self._current_fx_name)
            return "done"

    class Data(pl.LightningDataModule):
        def teardown(self, stage):
            names.append(f"datamodule {stage}")

    trainer = _trainer(NoProfiler(), Recording())
    trainer.datamodule = Data()
    trainer.lightning_module._current_fx_name = "training_step"
    with caplog.at_level("DEBUG", logger=lightning_call.__name__):
        assert lightning_call._call_lightning_module_hook(trainer, "on_train_epoch_end") == "done"
        lightning_call._call_lightning_datamodule_hook(trainer, "teardown", "fit")
    assert names == ["on_train_epoch_end", "datamodule fit"]
    assert trainer.lightning_module._current_fx_name == "training_step"  # restored
    messages = [r.getMessage() for r in caplog.records]
    assert "Trainer: calling lightning module hook: on_train_epoch_end" in messages
    assert "Trainer: calling lightning datamodule hook: teardown" in messages
