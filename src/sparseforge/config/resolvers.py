"""OmegaConf resolvers used by the configs (registered once, before Hydra composes)."""

from __future__ import annotations

from omegaconf import OmegaConf


def first_set(*values):
    """``${sf.or:a,b}``: the first value that is not null."""
    for v in values:
        if v is not None and v != "":
            return v
    return None


def only_if(condition, value):
    """``${sf.if:cond,value}``: ``value`` when ``cond`` is set, else null (for ``sf.or`` chains)."""
    return value if condition is not None and condition != "" else None


def epoch_fractions(epochs, fractions):
    """``${sf.epoch_fractions:${scenario.epochs_per_task},[0.5,0.75]}``: ``int(f * epochs)`` for each
    fraction, e.g. MultiStep milestones that follow the epochs per task (``[50, 75]`` of 100)."""
    return [int(float(f) * int(epochs)) for f in fractions]


def product(*values):
    """``${sf.mul:a,b}``: ``a * b`` (a setting that scales with another, e.g. a schedule with the epochs)."""
    result = 1
    for v in values:
        result *= v
    return result


def sweep_point_dir(overrides, experiment=None, seed=None) -> str:
    """``${sf.point_dir:${hydra.overrides.task},<experiment>,${seed}}``: a sweep point's deterministic
    directory name, hashed from experiment, seed and overrides (see points.py)."""
    from sparseforge.config.points import point_dirname

    return point_dirname(list(overrides or []), experiment, seed)


def launch_dir() -> str:
    """``${sf.cwd:}``: the directory the command was started in. Unlike ``${hydra:runtime.cwd}``
    it also resolves where Hydra has not set its config yet (the multirun sweeper, a launcher)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else os.getcwd()


def register_resolvers() -> None:
    for name, fn in (
        ("sf.or", first_set),
        ("sf.if", only_if),
        ("sf.epoch_fractions", epoch_fractions),
        ("sf.mul", product),
        ("sf.point_dir", sweep_point_dir),
        ("sf.cwd", launch_dir),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
