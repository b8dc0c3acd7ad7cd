"""Lightning's per-hook-call costs on small steps: the default profiler and callback dispatch.

Lightning wraps every hook it calls, on the module and on each callback, in
``with trainer.profiler.profile(name):``; the default ``PassThroughProfiler`` does nothing
there but still builds a generator-based context manager each time, about 50 times a step. That
was 2-3% of a batch-10 MLP step on a CPU; one shared no-op context costs next to nothing.

Lightning also calls every callback at every hook, whether or not the callback implements it: a
run's eleven callbacks times six per-batch hooks are 66 calls a step, of which six do anything
(measured: 9 us per hook, about 3% of a batch-10 MLP step on a CPU). Under :class:`NoProfiler`
(the profiler ``train.build`` gives every run) :func:`install_callback_dispatch` calls only the
callbacks whose hook is not ``Callback``'s own empty one, in the same order, with the same
arguments. The module's own per-step hooks get the same treatment: a hook the module leaves as
``LightningModule``'s empty default (``on_after_backward`` and five more, six calls a step) is
not called, and neither are three whose default cannot change anything here:
``on_before_batch_transfer`` and ``on_after_batch_transfer`` (they return the batch) and
``configure_gradient_clipping`` when no clip value is set (it clips nothing). With any other
profiler every callback and hook is called as before, so a profile still names every hook.

Two lookups Lightning repeats at every step are made once: which of the module and the datamodule
owns each batch-transfer hook (two ``is_overridden`` checks per hook, three hooks a step), and
whether ``training_step`` takes ``batch_idx`` (``inspect.getfullargspec``, 3% of a batch-10 MLP
step on a CPU). A fit without a learning-rate scheduler skips Lightning's scheduler update, one
without validation its decision to validate after each batch, and the strategy's empty
``on_train_batch_start`` is not called. The module, strategy and datamodule hooks that are called
skip the debug message and profiler action name Lightning formats for every call (they are built
only when debug logging is on).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.trainer import call as lightning_call
from lightning.pytorch.trainer.connectors.data_connector import _DataHookSelector
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

_NOTHING = nullcontext()
_CALL_EVERY_CALLBACK = lightning_call._call_callback_hooks  # Lightning's own
_CALL_MODULE_HOOK = lightning_call._call_lightning_module_hook  # Lightning's own
_CALL_STRATEGY_HOOK = lightning_call._call_strategy_hook  # Lightning's own
_CALL_DATAMODULE_HOOK = lightning_call._call_lightning_datamodule_hook  # Lightning's own
_FIND_HOOK_OWNER = _DataHookSelector.get_instance  # Lightning's own
_SHOULD_CHECK_VAL = _TrainingEpochLoop._should_check_val_fx  # Lightning's own
# The module hooks Lightning calls at every training step whose default does nothing.
_EMPTY_STEP_HOOKS = {
    name: getattr(LightningModule, name)
    for name in (
        "on_train_batch_start",
        "on_train_batch_end",
        "on_before_zero_grad",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
    )
}


# Module hooks whose default returns the batch it is given.
_IDENTITY_BATCH_HOOKS = {
    name: getattr(LightningModule, name) for name in ("on_before_batch_transfer", "on_after_batch_transfer")
}


class NoProfiler(PassThroughProfiler):
    def profile(self, action_name: str) -> nullcontext:
        return _NOTHING


def _own(obj: Any, hook_name: str, default) -> bool:
    """Whether ``obj`` replaces the base class's ``hook_name`` (``default``): its class or the instance."""
    return hook_name in vars(obj) or getattr(type(obj), hook_name, None) is not default


def implements(callback: Callback, hook_name: str) -> bool:
    """Whether calling ``hook_name`` on ``callback`` can do anything (its class or the instance
    overrides ``Callback``'s empty hook)."""
    return _own(callback, hook_name, getattr(Callback, hook_name, None))


def _implementers(trainer, hook_name: str, monitoring: bool | None) -> list[Callback]:
    callbacks = trainer.callbacks
    cache = trainer.__dict__.setdefault("_sparseforge_hook_callbacks", {})
    snapshot, chosen = cache.get((hook_name, monitoring), (None, []))
    # list equality compares items by identity first (callbacks have no __eq__ of their own), in C
    if snapshot != callbacks:
        if monitoring is None:
            selected = callbacks
        else:  # Lightning's split: EarlyStopping and checkpoints run after the other callbacks
            from lightning.pytorch.callbacks import Checkpoint, EarlyStopping

            selected = [cb for cb in callbacks if isinstance(cb, (EarlyStopping, Checkpoint)) == monitoring]
        chosen = [cb for cb in selected if implements(cb, hook_name)]
        cache[(hook_name, monitoring)] = (list(callbacks), chosen)
    return chosen


def _call_implementing_callbacks(
    trainer, hook_name: str, *args: Any, monitoring_callbacks: bool | None = None, **kwargs: Any
) -> None:
    if not isinstance(trainer.profiler, NoProfiler):
        _CALL_EVERY_CALLBACK(trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs)
        return
    callbacks = _implementers(trainer, hook_name, monitoring_callbacks)
    if not callbacks:
        return
    pl_module = trainer.lightning_module
    if pl_module:
        previous = pl_module._current_fx_name
        pl_module._current_fx_name = hook_name
    for callback in callbacks:
        fn = getattr(callback, hook_name)
        if callable(fn):
            fn(trainer, pl_module, *args, **kwargs)
    if pl_module:
        pl_module._current_fx_name = previous  # restored when hooks nest


def _clipping_does_nothing(trainer, module: LightningModule) -> bool:
    """``configure_gradient_clipping``'s default, with no clip value set, clips nothing: it calls
    ``clip_gradients``, which hands a clip value of 0 to the precision plugin, which returns."""
    return (
        not trainer.gradient_clip_val
        and module._fabric is None
        and not _own(module, "configure_gradient_clipping", LightningModule.configure_gradient_clipping)
        and not _own(module, "clip_gradients", LightningModule.clip_gradients)
        and type(trainer.precision_plugin).clip_gradients is Precision.clip_gradients
    )


def _call_module_hook_if_implemented(trainer, hook_name: str, *args: Any, pl_module=None, **kwargs: Any) -> Any:
    if isinstance(trainer.profiler, NoProfiler):
        module = pl_module or trainer.lightning_module
        if module is not None:
            default = _EMPTY_STEP_HOOKS.get(hook_name)
            if default is not None and not _own(module, hook_name, default):
                return None  # what the empty default returns
            default = _IDENTITY_BATCH_HOOKS.get(hook_name)
            if default is not None and not _own(module, hook_name, default):
                return args[0] if args else kwargs["batch"]
            if hook_name == "configure_gradient_clipping" and _clipping_does_nothing(trainer, module):
                return None
            return _RUN_MODULE_HOOK(trainer, module, hook_name, *args, **kwargs)
    return _CALL_MODULE_HOOK(trainer, hook_name, *args, pl_module=pl_module, **kwargs)


def _call_strategy_hook_unless_empty(trainer, hook_name: str, *args: Any, **kwargs: Any) -> Any:
    if not isinstance(trainer.profiler, NoProfiler):
        return _CALL_STRATEGY_HOOK(trainer, hook_name, *args, **kwargs)
    # The strategy's per-batch hook, Strategy's empty default on one device, is not called either.
    strategy = trainer.strategy
    if hook_name == "on_train_batch_start" and not _own(strategy, hook_name, Strategy.on_train_batch_start):
        return None
    return _RUN_STRATEGY_HOOK(trainer, hook_name, *args, **kwargs)


def _call_datamodule_hook(trainer, hook_name: str, *args: Any, **kwargs: Any) -> Any:
    datamodule = trainer.datamodule
    if datamodule is None or not isinstance(trainer.profiler, NoProfiler):
        return _CALL_DATAMODULE_HOOK(trainer, hook_name, *args, **kwargs)  # (Lightning raises without one)
    _trace(trainer, "lightning datamodule", hook_name)
    fn = getattr(datamodule, hook_name)
    return fn(*args, **kwargs) if callable(fn) else None


# -- Lightning's hook calls, without the profiler's name or the debug trace built when unused ------
# Lightning formats a debug message and a profiler action name for every hook call (two f-strings,
# with the no-op profiler and debug logging off: neither is used). These run the same calls, with
# the same current hook name, and trace only when debug logging is on.
_LIGHTNING_CALL_LOG = logging.getLogger(lightning_call.__name__)


def _trace(trainer, kind: str, hook_name: str) -> None:
    if _LIGHTNING_CALL_LOG.isEnabledFor(logging.DEBUG):
        _LIGHTNING_CALL_LOG.debug(f"{trainer.__class__.__name__}: calling {kind} hook: {hook_name}")


def _run_module_hook(trainer, module: LightningModule, hook_name: str, *args: Any, **kwargs: Any) -> Any:
    _trace(trainer, "lightning module", hook_name)
    fn = getattr(module, hook_name)
    if not callable(fn):
        return None
    previous, module._current_fx_name = module._current_fx_name, hook_name
    output = fn(*args, **kwargs)
    module._current_fx_name = previous  # restored when hooks nest
    return output


def _run_strategy_hook(trainer, hook_name: str, *args: Any, **kwargs: Any) -> Any:
    _trace(trainer, "strategy", hook_name)
    module = trainer.lightning_module
    previous, module._current_fx_name = module._current_fx_name, hook_name
    fn = getattr(trainer.strategy, hook_name)
    if not callable(fn):
        return None  # (as Lightning, without restoring the hook name)
    output = fn(*args, **kwargs)
    module._current_fx_name = previous
    return output


_RUN_MODULE_HOOK = _run_module_hook
_RUN_STRATEGY_HOOK = _run_strategy_hook


def _should_check_val_if_validating(self: _TrainingEpochLoop, data_fetcher) -> bool:
    """Lightning's decision to validate after a batch, which is no at once for a fit without
    validation (no validation dataloader or no ``validation_step``: looked up once per fit)."""
    source, module = self.val_loop._data_source, self.trainer.lightning_module
    known = self.__dict__.get("_sparseforge_validates")
    if known is None or known[0] is not source.instance or known[1] is not module:
        validates = source.is_defined() and is_overridden("validation_step", module)
        known = self.__dict__["_sparseforge_validates"] = (source.instance, module, validates)
    return known[2] and _SHOULD_CHECK_VAL(self, data_fetcher)


def _remembered_hook_owner(self: _DataHookSelector, hook_name: str):
    """Lightning's choice of the module or the datamodule for a batch-transfer hook, made once per
    selector (Lightning makes a new one for every fit, validate or test call)."""
    owners = self.__dict__.setdefault("_sparseforge_owners", {})
    owner = owners.get(hook_name)
    if owner is None:
        owner = owners[hook_name] = _FIND_HOOK_OWNER(self, hook_name)
    return owner


_TAKES_BATCH_IDX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # training_step function -> bool


def _build_training_step_kwargs(self: _TrainingEpochLoop, kwargs: OrderedDict, batch: Any, batch_idx: int):
    """Lightning's ``_build_kwargs``, with its signature check made once per ``training_step`` function."""
    kwargs["batch"] = batch
    step = self.trainer.lightning_module.training_step
    function = getattr(step, "__func__", step)
    try:
        takes_batch_idx = _TAKES_BATCH_IDX.get(function)
    except TypeError:  # a callable that cannot be weakly referenced or hashed: check it every time
        function, takes_batch_idx = None, None
    if takes_batch_idx is None:
        takes_batch_idx = is_param_in_hook_signature(step, "batch_idx", min_args=2)
        if function is not None:
            _TAKES_BATCH_IDX[function] = takes_batch_idx
    if takes_batch_idx:
        kwargs["batch_idx"] = batch_idx
    return kwargs


_UPDATE_LR_SCHEDULERS = _TrainingEpochLoop.update_lr_schedulers  # Lightning's own


def _update_lr_schedulers_if_any(self: _TrainingEpochLoop, interval: str, update_plateau_schedulers: bool) -> None:
    """Lightning's scheduler update, which returns without a scheduler, after two accumulation
    checks (twice a step)."""
    if self.trainer.lr_scheduler_configs:
        _UPDATE_LR_SCHEDULERS(self, interval, update_plateau_schedulers)


def install_callback_dispatch() -> None:
    """Route Lightning's callback, module, strategy and datamodule hook calls through the functions
    above, and its per-step lookups and checks through their once-per-fit versions (idempotent;
    trainers with another profiler than :class:`NoProfiler` still call every hook through
    Lightning's own functions)."""
    lightning_call._call_callback_hooks = _call_implementing_callbacks
    lightning_call._call_lightning_module_hook = _call_module_hook_if_implemented
    lightning_call._call_strategy_hook = _call_strategy_hook_unless_empty
    lightning_call._call_lightning_datamodule_hook = _call_datamodule_hook
    _DataHookSelector.get_instance = _remembered_hook_owner
    _TrainingEpochLoop._build_kwargs = _build_training_step_kwargs
    _TrainingEpochLoop.update_lr_schedulers = _update_lr_schedulers_if_any
    _TrainingEpochLoop._should_check_val_fx = _should_check_val_if_validating
