"""Sweep points: identity and directories, Hydra's expansion in `sparseforge-sweep plan`, the
overrides file of the sbatch path, and the cluster pre-flight's parsing (no SLURM needed)."""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparseforge.config.points import completed_summary, point_dirname, point_hash
from sparseforge.errors import ConfigError
from sparseforge.sweeps.cli import read_line
from sparseforge.sweeps.cluster import Node, Partition, check_request, gpu_count, parse_time_min
from sparseforge.sweeps.plan import SweepError, expand, prepare_run_points
from tests.helpers.cli import REPO, sweep_tool

keys = st.sampled_from(["optimizer.lr", "sparsity.density", "data.batch_size", "model.width", "+experiment"])
values = st.sampled_from(["0.1", "0.05", "128", "rigl_cifar100", "[1,2]"])
override_lists = st.dictionaries(keys, values, min_size=1, max_size=4).map(lambda d: [f"{k}={v}" for k, v in d.items()])


@given(override_lists, st.randoms())
def test_point_identity_ignores_order_and_bookkeeping_overrides(overrides, rnd):
    shuffled = list(overrides)
    rnd.shuffle(shuffled)
    bookkeeping = ["ckpt_path=auto", "sweep_name=x", "logger=csv", "paths.log_dir=/tmp/y", "print_config=false"]
    bookkeeping += ["report.metric=cl.avg_acc"]  # what the table shows is not part of the run
    assert point_dirname(shuffled + bookkeeping, "exp", 0) == point_dirname(overrides, "exp", 0)


@given(override_lists)
def test_point_identity_changes_with_values_seed_and_experiment(overrides):
    base = point_hash(overrides, "exp", 0)
    assert point_hash(overrides, "exp", 1) != base
    assert point_hash(overrides, "other", 0) != base
    changed = [o.replace("=", "=9", 1) for o in overrides]
    assert point_hash(changed, "exp", 0) != base


def test_point_dirname_is_readable_and_path_safe():
    name = point_dirname(["seed=1", "sparsity.density=0.1", "paths.data_dir=/a/b", "dataset.root=/x/y"], None, 1)
    assert name.startswith("root=_x_y,seed=1,density=0.1-")  # keys shortened, sorted by full key
    assert "/" not in name


def test_completed_summary_reads_status(tmp_path):
    assert completed_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running"}))
    assert completed_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text("{not json")
    assert completed_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed", "metrics": {"test/acc": 0.5}}))
    assert completed_summary(tmp_path)["metrics"] == {"test/acc": 0.5}


def test_expand_is_hydras_cartesian_product():
    points = expand(["+experiment=dense_mnist", "sparsity.density=0.05,0.1", "seed=range(0,3)"])
    assert len(points) == 6
    # +experiment=X is the same point as experiment=X (the preset group has a null default)
    assert points[0] == ["experiment=dense_mnist", "sparsity.density=0.05", "seed=0"]
    assert points[-1] == ["experiment=dense_mnist", "sparsity.density=0.1", "seed=2"]
    assert expand(["experiment=dense_mnist", "sparsity.density=0.05,0.1", "seed=range(0,3)"]) == points
    assert expand(["a=1"]) == [["a=1"]]


@pytest.mark.parametrize("bad", [["seed=0,,1"], ["model.hidden_sizes=[1,2"], ["-m", "seed=1"]])
def test_expand_rejects_what_does_not_parse(bad):
    with pytest.raises(SweepError, match="parse|overrides only"):
        expand(bad)


def test_planned_run_dirs_are_the_multirun_dirs(tmp_path):
    """A single run with sweep_name (the sbatch path) lands where `-m` puts the same point."""
    args = [f"paths.log_dir={tmp_path}", "sweep_name=s", "seed=0,1", "optimizer.lr=0.1,0.05"]
    points = prepare_run_points(args)
    assert [p.run_dir.parent for p in points] == [tmp_path / "multiruns" / "s"] * 4
    assert len({p.run_dir for p in points}) == 4
    for p in points:
        cfg = p.cfg
        expected = point_dirname(list(cfg.hydra.overrides.task), None, cfg.seed)
        assert p.run_dir.name == expected
        assert p.finished is None


def test_planned_run_dirs_of_a_study_are_its_multirun_dirs(tmp_path):
    """A study declares its axes in hydra.sweeper.params: they come first, as Hydra's basic sweeper
    puts them, a key on the command line replaces its axis, and the study names the sweep."""
    args = [
        "+study=cl_split_mnist",
        f"paths.log_dir={tmp_path}",
        "seed=3",
        "arm=cl_split_mnist/derpp,cl_split_mnist/er",
    ]
    points = prepare_run_points(args, default_sweep_name="unused")
    assert [p.overrides for p in points] == [
        [f"arm=cl_split_mnist/{arm}", "seed=3", "study=cl_split_mnist", f"paths.log_dir={tmp_path}"]
        for arm in ("derpp", "er")
    ]
    for p in points:
        assert p.run_dir.parent == tmp_path / "multiruns" / "cl_split_mnist"
        assert p.run_dir.name == point_dirname(p.overrides, "split_mnist", 3)  # what -m names the point
        assert p.cfg.hydra.runtime.choices.arm == p.overrides[0].split("=")[1]
    whole = prepare_run_points(["+study=cl_split_mnist", f"paths.log_dir={tmp_path}"])
    assert len(whole) == 4 * 3 and whole[0].overrides[:2] == ["arm=cl_split_mnist/finetune", "seed=0"]


def test_plan_refuses_a_sweeper_that_picks_its_points_while_it_runs(tmp_path):
    with pytest.raises(SweepError, match="picks its points while it runs"):
        prepare_run_points(["hparams_search=optuna", f"paths.log_dir={tmp_path}"])


def test_plan_checks_every_point_before_writing(tmp_path):
    with pytest.raises(SweepError, match=r"sweep point 1 .*seed=x.*seed: must be an integer"):
        prepare_run_points([f"paths.log_dir={tmp_path}", "sweep_name=s", "seed=0,x"])
    with pytest.raises(SweepError, match=r"sweep point 1 .*optimizer.lr=abc"):
        prepare_run_points([f"paths.log_dir={tmp_path}", "sweep_name=s", "optimizer.lr=0.1,abc"])
    with pytest.raises(SweepError, match=r"Could not find 'dataset/nope'"):
        prepare_run_points([f"paths.log_dir={tmp_path}", "dataset=nope"])


def _sweep_cli(*args):
    return sweep_tool("cli", *args)


@pytest.mark.e2e  # a CLI subprocess
def test_plan_cli_writes_lines_and_the_sbatch_line(tmp_path):
    out = tmp_path / "sweep.txt"
    with out.open("w") as f:
        result = sweep_tool("cli", "plan", "-p", "2", f"paths.log_dir={tmp_path}", "seed=0,1,2", stdout=f)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(f"seed={i}" in line for i, line in enumerate(lines))
    name = lines[0].split("sweep_name=")[1].split()[0]  # no sweep_name given: one is made and noted
    assert f"using sweep_name={name}" in result.stderr and all(f"sweep_name={name}" in ln for ln in lines)
    sbatch = result.stderr.strip().splitlines()[-1]
    assert sbatch.startswith("sbatch --array=0-2%2 ") and sbatch.endswith(f"slurm/array.sbatch {out}")
    assert (tmp_path / "multiruns" / name / ".slurm").is_dir()  # sbatch needs the --output folder to exist


@pytest.mark.e2e  # a CLI subprocess
def test_plan_cli_errors_are_one_line(tmp_path):
    result = _sweep_cli("plan", f"paths.log_dir={tmp_path}", "sparsity.density=0.05,,0.1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot parse the sweep: Error parsing override")


def test_out_of_range_index_names_the_valid_range(tmp_path):
    f = tmp_path / "sweep.txt"
    f.write_text("# a comment\nseed=0 sweep_name=s\n\nseed=1 sweep_name=s\n")
    assert read_line(f, 1) == ["seed=1", "sweep_name=s"]
    with pytest.raises(
        SweepError, match=r"array index 2 is out of range .* 2 sweep points \(indices 0-1\); submit with --array=0-1"
    ):
        read_line(f, 2)
    result = _sweep_cli("run", str(f), "5")
    assert result.returncode == 2
    assert "error: array index 5 is out of range" in result.stderr


def test_gres_and_time_parsing():
    assert gpu_count("(null)") == 0 and gpu_count(None) == 0
    assert gpu_count("gpu:a100:4(S:0-1)") == 4
    assert gpu_count("gpu:2,gpu:v100:1,shard:8") == 3
    assert [parse_time_min(t) for t in ("30", "30:30", "1:00:00", "2-00", "2-01:30", "UNLIMITED")] == [
        30,
        30.5,
        60,
        2880,
        2970,
        None,
    ]


def test_check_request_names_the_setting_and_what_the_cluster_has():
    cpu = Partition("cpu", True, 120, [Node("n1", 8, 16000, 0, ["cpu"]), Node("n2", 4, 32000, 0, ["cpu"])])
    gpu = Partition("gpu", False, None, [Node("g1", 16, 64000, 4, ["gpu"])])
    parts = {"cpu": cpu, "gpu": gpu}
    assert check_request({"mem_gb": 31, "cpus_per_task": 8}, parts) is cpu  # each fits some node
    assert check_request({"partition": "gpu", "gpus_per_node": 4}, parts) is gpu
    cases = [
        ({"mem_gb": 32}, r"mem_gb: asks for 32 GB per node, the largest node of partition cpu has 31.2 GB"),
        ({"gpus_per_node": 1}, r"gpus_per_node: asks for 1 GPUs per node, partition cpu has no GPUs"),
        ({"partition": "gpu", "gres": "gpu:8"}, r"gres: asks for 8 GPUs per node, partition gpu has at most 4"),
        ({"cpus_per_task": 4, "tasks_per_node": 3}, r"cpus_per_task: asks for 12 CPUs per node"),
        ({"partition": "big"}, r"partition: no partition 'big' on this cluster \(allowed: cpu, gpu\)"),
        ({"timeout_min": 121}, r"timeout_min: asks for 121 min, partition cpu allows at most 120 min"),
        ({"nodes": 3}, r"nodes: asks for 3 nodes, partition cpu has 2"),
    ]
    for params, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_request(params, parts)


def test_array_sbatch_is_valid_bash_and_gives_requeue_to_lightning():
    script = REPO / "slurm" / "array.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    directives = [ln.split()[1] for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")]
    assert "--signal=USR1@90" in directives and "--requeue" in directives


def test_wandb_sweep_template_passes_valid_hydra_overrides(tmp_path):
    """What a W&B agent runs for the first grid point composes with the real config."""
    import itertools

    import yaml

    from tests.helpers.config import compose_config

    sweep = yaml.safe_load((REPO / "slurm" / "wandb_sweep.yaml").read_text())
    assert sweep["command"][:4] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    params = sweep["parameters"]
    grid = itertools.product(*[[f"{k}={v}" for v in p["values"]] for k, p in params.items()])
    first = list(next(grid))
    cfg = compose_config([*first, *sweep["command"][4:]], output_dir=tmp_path)
    assert cfg.sparsity.density == params["sparsity.density"]["values"][0]
    assert cfg.logger.wandb.group == "wandb_density"


def test_slurm_environment_only_inside_a_slurm_step(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from sparseforge.lightning.slurm import slurm_environment

    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    assert slurm_environment(auto_requeue=True) is None  # not under srun: nothing to requeue
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "sparseforge")
    env = slurm_environment(auto_requeue=False, requeue_signal="SIGUSR2")
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False
    assert env.requeue_signal.name == "SIGUSR2"
    with pytest.raises(ConfigError, match="slurm_environment.requeue_signal: unknown signal 'USR9'"):
        slurm_environment(requeue_signal="USR9")


def test_hardware_slurm_gives_requeue_to_submitit(tmp_path):
    from tests.helpers.config import compose_config

    cfg = compose_config(["hardware=slurm"], output_dir=tmp_path)
    assert cfg.slurm_environment.auto_requeue is False and cfg.ckpt_path == "auto"
    assert compose_config([], output_dir=tmp_path).slurm_environment.auto_requeue is True  # the sbatch path
