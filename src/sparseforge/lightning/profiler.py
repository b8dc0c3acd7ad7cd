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
not called. With any other profiler every callback and hook is called as before, so a profile
still names every hook.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer import call as lightning_call

_NOTHING = nullcontext()
_CALL_EVERY_CALLBACK = lightning_call._call_callback_hooks  # Lightning's own
_CALL_MODULE_HOOK = lightning_call._call_lightning_module_hook  # Lightning's own
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


class NoProfiler(PassThroughProfiler):
    def profile(self, action_name: str) -> nullcontext:
        return _NOTHING


def implements(callback: Callback, hook_name: str) -> bool:
    """Whether calling ``hook_name`` on ``callback`` can do anything (its class or the instance
    overrides ``Callback``'s empty hook)."""
    if hook_name in vars(callback):
        return True
    return getattr(type(callback), hook_name, None) is not getattr(Callback, hook_name, None)


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
    pl_module = trainer.lightning_module
    if pl_module:
        previous = pl_module._current_fx_name
        pl_module._current_fx_name = hook_name
    for callback in _implementers(trainer, hook_name, monitoring_callbacks):
        fn = getattr(callback, hook_name)
        if callable(fn):
            fn(trainer, pl_module, *args, **kwargs)
    if pl_module:
        pl_module._current_fx_name = previous  # restored when hooks nest


def _call_module_hook_if_implemented(trainer, hook_name: str, *args: Any, pl_module=None, **kwargs: Any) -> Any:
    default = _EMPTY_STEP_HOOKS.get(hook_name)
    if default is not None and isinstance(trainer.profiler, NoProfiler):
        module = pl_module or trainer.lightning_module
        if module is not None and hook_name not in vars(module) and getattr(type(module), hook_name) is default:
            return None  # what the empty default returns
    return _CALL_MODULE_HOOK(trainer, hook_name, *args, pl_module=pl_module, **kwargs)


def install_callback_dispatch() -> None:
    """Route Lightning's callback-hook calls through :func:`_call_implementing_callbacks` and its
    module-hook calls through :func:`_call_module_hook_if_implemented` (idempotent; trainers with
    another profiler than :class:`NoProfiler` are unaffected)."""
    lightning_call._call_callback_hooks = _call_implementing_callbacks
    lightning_call._call_lightning_module_hook = _call_module_hook_if_implemented
