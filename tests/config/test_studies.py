"""Studies (configs/study/, their arms in configs/arm/<study>/): every point of every study
composes and passes the start checks, in the order and directories of its sweep; every arm file
belongs to a study; a study's report names its own rows; what a study fixes by construction
(the ER arms of the SHARP study get SHARP's memory in bytes) holds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sparseforge.config import config_dir
from sparseforge.config.report import Report
from sparseforge.config.validate import validate
from sparseforge.continual.buffer import capacity_for_bytes
from sparseforge.errors import ConfigError
from sparseforge.sweeps.plan import expand, prepare_run_points
from tests.helpers.config import compose_config

CONFIGS = Path(config_dir())
STUDIES = sorted(p.stem for p in (CONFIGS / "study").glob("*.yaml"))
# Studies whose points are arms x seeds (arms: configs/arm/<study>/); the others sweep a grid of
# plain overrides (e.g. the CL-with-DST study: growth x distribution x density x seed).
ARMED = [name for name in STUDIES if "arm:" in (CONFIGS / "study" / f"{name}.yaml").read_text()]


def axes(cfg) -> dict[str, list[str]]:
    """The values of each axis a study declares in hydra.sweeper.params, as Hydra expands them."""
    return {k: [p[0].split("=", 1)[1] for p in expand([f"{k}={v}"])] for k, v in cfg.hydra.sweeper.params.items()}


def declared_axes(cfg) -> tuple[list[str], list[int]]:
    """(arms, seeds) of an arms x seeds study."""
    declared = axes(cfg)
    return declared["arm"], [int(s) for s in declared["seed"]]


def test_there_are_studies():
    assert {"cl_split_mnist", "sparsity_mnist", "sparcl_reduced", "sharp_reduced", "sharp_full", "pgf_reduced"} <= set(
        ARMED
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_every_point_of_a_study_composes_in_its_sweeps_order_and_directory(name, tmp_path):
    points = prepare_run_points([f"+study={name}", f"paths.log_dir={tmp_path}"])  # composes and checks each
    declared = axes(points[0].cfg)
    assert len(points) == math.prod(len(values) for values in declared.values()) and len(declared["seed"]) >= 2
    sweep = points[0].cfg.sweep_name
    assert {p.cfg.sweep_name for p in points} == {sweep}
    assert {p.run_dir.parent for p in points} == {tmp_path / "multiruns" / sweep}
    assert len({p.run_dir for p in points}) == len(points)
    assert all(p.cfg.hydra.mode.name == "MULTIRUN" for p in points)  # runs as a sweep, also without -m
    if name not in ARMED:
        return
    arms, seeds = declared_axes(points[0].cfg)
    assert len(arms) >= 2 and sweep == name
    assert [(p.cfg.hydra.runtime.choices.arm, p.cfg.seed) for p in points] == [(a, s) for a in arms for s in seeds]
    report = Report.from_config(points[0].cfg.report)
    rows = {a.rsplit("/", 1)[1] for a in arms}  # the labels sparseforge-aggregate gives the rows
    assert all(a in rows and b in rows for a, b in report.paired), (report.paired, rows)


@pytest.mark.slow  # composes every point of a study
@pytest.mark.parametrize("name", ARMED)
def test_every_arm_of_a_study_composes(name, tmp_path):
    """One seed per arm (a key on the command line replaces the study's axis); every point: above."""
    points = prepare_run_points([f"+study={name}", "seed=7", f"paths.log_dir={tmp_path}"])
    arms, _ = declared_axes(points[0].cfg)
    assert [(p.cfg.hydra.runtime.choices.arm, p.cfg.seed) for p in points] == [(a, 7) for a in arms]


def study_config(name: str, *overrides: str):
    """A study's composed config with its hydra node (its declared axes)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sparseforge.compose import register_all

    register_all()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"study={name}", *overrides], return_hydra_config=True)


def test_every_arm_file_belongs_to_a_study():
    listed = set().union(*(declared_axes(study_config(name))[0] for name in ARMED))
    files = {p.relative_to(CONFIGS / "arm").with_suffix("").as_posix() for p in (CONFIGS / "arm").rglob("*.yaml")}
    assert files == listed


def test_hardware_slurm_keeps_the_study_s_axes_and_takes_its_launcher():
    """On SLURM the same sweep goes through sparseforge's submitit launcher (one job array)."""
    plain, slurm = study_config("cl_split_mnist"), study_config("cl_split_mnist", "hardware=slurm")
    assert slurm.hydra.sweeper.params == plain.hydra.sweeper.params
    assert slurm.hydra.launcher._target_.endswith("SparseforgeSlurmLauncher") and slurm.ckpt_path == "auto"


def test_a_study_with_an_arm_is_the_command_it_replaces(tmp_path):
    """The arm and the study compose to what the old per-arm command lines said."""
    study = compose_config(["study=cl_split_mnist", "arm=cl_split_mnist/derpp", "seed=1"], output_dir=tmp_path)
    plain = compose_config(
        ["+experiment=split_mnist", "sparsity=dense", "method=derpp", "method.buffer_size=500", "method.alpha=1.0"]
        + ["method.beta=0.5", "seed=1"],
        output_dir=tmp_path,
    )
    for key in ("dataset", "model", "scenario", "method", "optimizer", "data", "sparsity", "seed"):
        assert study[key] == plain[key], key


def test_the_sharp_study_gives_er_the_bytes_of_sharps_memory(tmp_path):
    sharp = compose_config(["study=sharp_reduced", "arm=sharp/sharp"], output_dir=tmp_path).method
    # the STM: 2 classes x stm_num_tasks tasks x stm_per_class samples x 16x7x7 uint8 activations,
    # plus a float32 min and max per class; the LTM: 10 classes x ltm_per_class float32
    # representations of 500 units plus a 500-unit mask per class (tests/methods/test_sharp_method.py
    # checks these counts against a run)
    stm = 2 * sharp.stm_num_tasks * (sharp.stm_per_class * 16 * 7 * 7 + 8)
    ltm = 10 * (sharp.ltm_per_class * 500 * 4 + 500)
    assert (stm, ltm) == (39_216, 505_000)
    budgets = {"er_stm": stm, "er_stm_ltm": stm + ltm}
    for arm, budget in budgets.items():
        er = compose_config(["study=sharp_reduced", f"arm=sharp/{arm}"], output_dir=tmp_path)
        assert er.method.buffer_size == capacity_for_bytes(budget, (1, 28, 28)), arm
        assert er.data.batch_size == er.method.minibatch_size == 256
    full = compose_config(["study=sharp_full", "arm=sharp/sharp_paper"], output_dir=tmp_path)
    assert full.scenario.epochs_per_task == full.method.phase_epochs * full.method.max_phases == 30
    assert full.method.tau_param == 30
    # the reduced protocol: one phase per epoch, tau_param 3 x phases, for any epochs per task
    for epochs in (3, 1):
        reduced = compose_config(
            ["study=sharp_reduced", "arm=sharp/sharp_raw", f"scenario.epochs_per_task={epochs}"], output_dir=tmp_path
        )
        assert (reduced.method.phase_epochs, reduced.method.max_phases, reduced.method.tau_param) == (
            1,
            epochs,
            3 * epochs,
        )
        assert reduced.method.replay_layer.value == "input"


def test_a_bad_report_fails_at_start(tmp_path):
    cfg = compose_config(["report={metric:cl.avg_acc,colums:[cl.forgetting]}"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"report.colums: unknown key 'colums' \(did you mean 'columns'\?\)"):
        validate(cfg)
