"""Sweeps on a real SLURM cluster (CI starts one: sudo slurm/start-local-slurm.sh).

Both paths run a 4-point sweep of a tiny experiment end to end: Hydra's submitit launcher
(``hardware=slurm``, one job array, submitit owns requeue) and ``sparseforge-sweep plan`` +
``slurm/array.sbatch`` (Lightning owns requeue). In each, one point is interrupted mid-run and
must resume from its last.ckpt and end with exactly the numbers and weights of an uninterrupted
run; a rerun must submit nothing. Bad inputs must fail before anything is submitted.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparseforge.lightning.loggers import run_id_for
from sparseforge.train import train
from tests.helpers.cli import REPO, sweep_tool
from tests.helpers.config import compose_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = [
    "sparsity=dense",
    "scenario=iid",
    "method=finetune",
    # ~1 s per epoch whatever the machine's speed, so the requeue and the signal below reach a
    # run that is still training (the computation itself is untouched: results stay comparable)
    "+callbacks.pace._target_=tests.helpers.pacing.EpochPace",
    "+callbacks.pace.seconds=1.0",
    "scenario.epochs_per_task=6",
    "data.batch_size=64",
    "print_config=false",
    "trainer.enable_progress_bar=false",
]
SWEEP = ["seed=0,1", "optimizer.lr=0.05,0.1"]  # Hydra's order: array task 0 is seed=0 lr=0.05, task 1 seed=0 lr=0.1
FIRST_POINT = ("seed=0", "optimizer.lr=0.05")
SECOND_POINT = ("seed=0", "optimizer.lr=0.1")


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The cluster's first node state; tests/conftest.py skips (or, in CI, fails) these tests
    before this runs where no cluster is up."""
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.stdout.split()[0]


@pytest.fixture
def job_ids():
    """Job ids a test submitted: cancelled afterwards, so a failing test leaves no jobs behind."""
    ids: list[str] = []
    yield ids
    for job in ids:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The first two sweep points trained uninterrupted, in this process: point -> (metrics, weights)."""
    runs = {}
    for point in (FIRST_POINT, SECOND_POINT):
        out = tmp_path_factory.mktemp("reference") / "run"
        metrics = train(compose_config([*TINY, "logger=csv", *point], output_dir=out))
        runs[point] = metrics, weights(out)
    return runs


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    squeue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\nsqueue:\n{squeue}")


def checkpointed(sweep_dir: Path, point) -> Path | None:
    """The point's run dir (found by its .hydra/overrides.yaml) once it has a last.ckpt."""
    for overrides in sweep_dir.glob("*/.hydra/overrides.yaml"):
        run_dir = overrides.parents[1]
        if all(f"- {o}" in overrides.read_text().splitlines() for o in point):
            return run_dir if (run_dir / "checkpoints" / "last.ckpt").exists() else None
    return None


def send_signal(job: str, signal: str, delivered) -> None:
    """``scancel --signal``, stopped as soon as ``delivered()`` says the job handled it.

    scancel keeps retrying while the job it signals is being requeued, and a retry that lands on
    the restarted job before Lightning installs its handlers kills it: so never let it run on.
    """
    sender = subprocess.Popen(["scancel", f"--signal={signal}", job])
    try:
        wait_for(delivered, 120, f"{job} to handle {signal}", interval=0.2)
    finally:
        if sender.poll() is None:
            sender.kill()


def log_says(path: Path, text: str):
    return lambda: path.exists() and text in path.read_text(errors="replace")


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


def queue_empty(job: str) -> bool:
    result = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and result.stdout.strip() == ""


def assert_same_result(run_dir: Path, reference) -> None:
    metrics, ref_weights = reference
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["metrics"] == {k: v for k, v in metrics.items()}
    resumed = weights(run_dir)
    assert resumed.keys() == ref_weights.keys()
    assert all(torch.equal(resumed[k], ref_weights[k]) for k in resumed)


@pytest.mark.timeout(1800)
def test_submitit_sweep_is_one_array_resumes_a_preempted_point_and_a_rerun_submits_nothing(
    tmp_path, slurm_cluster, reference, job_ids
):
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "hardware=slurm",
        "sweep_name=sub",
        f"paths.log_dir={tmp_path}",
        "logger=csv",
        *TINY,
        *SWEEP,
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.array_parallelism=2",
        "hydra.launcher.timeout_min=30",
    ]
    sweep_dir = tmp_path / "multiruns" / "sub"
    log = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        first = wait_for(lambda: checkpointed(sweep_dir, FIRST_POINT), 600, "the first point's first checkpoint")
        task_dirs = [p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]
        array_id = task_dirs[0].split("_")[0]
        job_ids.append(array_id)
        # submitit's own preemption signal: it requeues the task, which must resume from last.ckpt
        task_log = sweep_dir / ".submitit" / f"{array_id}_0" / f"{array_id}_0_0_log.out"
        send_signal(f"{array_id}_0", "USR2", log_says(task_log, "this job is preempted"))
        assert launcher.wait(timeout=1500) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
        log.close()

    done = summaries(sweep_dir)
    assert len(done) == 4 and all(s["status"] == "completed" for s in done.values())
    script = next((sweep_dir / ".submitit").glob(".submission_file_*.sh")).read_text()
    assert "#SBATCH --array=0-3%2" in script  # one sweep = one job array
    task_log = (sweep_dir / ".submitit" / f"{array_id}_0" / f"{array_id}_0_0_log.out").read_text()
    assert "this job is preempted" in task_log and f"Requeued job {array_id}_0" in task_log
    assert "SLURM auto-requeueing enabled" not in task_log  # Lightning does not also requeue
    assert json.loads((first / "summary.json").read_text())["resumed_from"] == str(first / "checkpoints" / "last.ckpt")
    assert_same_result(first, reference[FIRST_POINT])

    # the same sweep again: every point is complete, nothing is submitted, nothing rewritten
    jobs_before = sorted(p.name for p in (sweep_dir / ".submitit").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "4 of 4 sweep points already completed: not submitted again" in rerun.stdout + rerun.stderr
    assert sorted(p.name for p in (sweep_dir / ".submitit").iterdir()) == jobs_before
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")} == mtimes


@pytest.mark.timeout(1800)
def test_sbatch_array_runs_the_planned_lines_resumes_requeued_tasks_and_aggregates(
    tmp_path, slurm_cluster, reference, job_ids
):
    plan_args = [
        "sweep_name=arr",
        f"paths.log_dir={tmp_path}",
        "logger=wandb",
        "logger.wandb.mode=offline",
        *TINY,
        *SWEEP,
    ]
    sweep_file = tmp_path / "sweep.txt"
    with sweep_file.open("w") as out:
        plan = sweep_tool("cli", "plan", "-p", "2", *plan_args, stdout=out, timeout=600)
    assert plan.returncode == 0, plan.stderr
    assert len(sweep_file.read_text().splitlines()) == 4
    sbatch_line = plan.stderr.strip().splitlines()[-1]
    assert sbatch_line.startswith("sbatch --array=0-3%2 --output=")
    # the printed line, as a user would paste it
    submitted = subprocess.run(sbatch_line, shell=True, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    array_id = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
    job_ids.append(array_id)

    sweep_dir = tmp_path / "multiruns" / "arr"
    first = wait_for(lambda: checkpointed(sweep_dir, FIRST_POINT), 600, "the first point's first checkpoint")
    subprocess.run(["scontrol", "requeue", f"{array_id}_0"], check=True, timeout=30)  # as an admin or preemption would
    second = wait_for(lambda: checkpointed(sweep_dir, SECOND_POINT), 600, "the second point's first checkpoint")
    second_log_file = sweep_dir / ".slurm" / f"{array_id}_1.out"
    # what --signal=USR1@90 sends before the time limit
    send_signal(f"{array_id}_1", "USR1", log_says(second_log_file, "Handling auto-requeue signal"))
    wait_for(lambda: queue_empty(array_id), 1500, f"array {array_id} to finish", interval=2)

    done = summaries(sweep_dir)
    logs = {p.name: p.read_text() for p in (sweep_dir / ".slurm").glob("*.out")}
    assert len(done) == 4 and all(s["status"] == "completed" for s in done.values()), logs
    first_log = logs[f"{array_id}_0.out"]
    assert "(restart 0)" in first_log and "(restart 1)" in first_log
    assert "SLURM auto-requeueing enabled" in first_log  # Lightning owns requeue on this path
    assert json.loads((first / "summary.json").read_text())["resumed_from"] == str(first / "checkpoints" / "last.ckpt")
    assert_same_result(first, reference[FIRST_POINT])
    # Lightning answered USR1: HPC checkpoint, requeue of this array task, resume from last.ckpt
    second_log = logs[f"{array_id}_1.out"]
    assert "Handling auto-requeue signal" in second_log and "(restart 1)" in second_log
    assert (second / "hpc_ckpt_1.ckpt").exists()
    assert json.loads((second / "summary.json").read_text())["resumed_from"] == str(
        second / "checkpoints" / "last.ckpt"
    )
    assert_same_result(second, reference[SECOND_POINT])
    # the restarted job continued the same W&B run: two offline segments, one run id
    segments = sorted((first / "wandb").glob("offline-run-*"))
    assert len(segments) == 2
    assert {p.name.rsplit("-", 1)[1] for p in segments} == {run_id_for(first)}

    # planning the same sweep again leaves nothing to submit
    again = sweep_tool("cli", "plan", *plan_args, timeout=600)
    assert again.returncode == 0 and again.stdout == ""
    assert "4 sweep points, 4 already completed (left out)" in again.stderr and "nothing to submit" in again.stderr

    # the aggregated table equals the numbers computed by hand from the four summaries
    agg = sweep_tool("aggregate", str(sweep_dir), timeout=600)
    assert agg.returncode == 0, agg.stderr
    for lr in ("0.05", "0.1"):
        accs = [s["metrics"]["test/acc"] for s in done.values() if str(s["config"]["optimizer"]["lr"]) == lr]
        assert len(accs) == 2
        row = f"| {lr} | 2 | {statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f} |"
        assert row in agg.stdout, agg.stdout


def node_memory_gb() -> int:
    out = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True).stdout
    return max(int(m) for m in re.findall(r"RealMemory=(\d+)", out)) // 1024


@pytest.mark.parametrize(
    "extra, rc, message",
    [
        (
            ["hydra.launcher.mem_gb={too_much}"],
            2,
            r"error: config error: hydra.launcher.mem_gb: asks for \d+ GB per node, "
            r"the largest node of partition \S+ has [\d.]+ GB",
        ),
        (
            ["hardware=slurm_gpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"],
            2,
            r"error: config error: hydra.launcher.gpus_per_node: asks for 1 GPUs per node, partition \S+ has no GPUs",
        ),
        (["hydra.launcher.partition=nonexistent"], 2, r"hydra.launcher.partition: no partition 'nonexistent'"),
        (["seed=0,x"], 2, r"error: sweep point 1 \(.*seed=x\): config error: seed: must be an integer, got 'x'"),
        (["sparsity.density=0.05,,0.1"], 1, r"Error parsing override 'sparsity.density=0.05,,0.1'"),
    ],
)
def test_bad_inputs_fail_before_anything_is_submitted(tmp_path, slurm_cluster, extra, rc, message):
    extra = [e.format(too_much=node_memory_gb() + 1) for e in extra]
    cmd = [
        "-m",
        "hardware=slurm",
        "sweep_name=bad",
        f"paths.log_dir={tmp_path}",
        *TINY,
        "hydra.launcher.mem_gb=1",
        *extra,
    ]
    if not any(e.startswith(("seed=", "sparsity.density=")) for e in extra):
        cmd.append("seed=0,1")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *cmd], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == rc, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "multiruns" / "bad").exists()  # no sweep dir, so no .submitit: nothing submitted


def test_array_range_is_checked_before_submitting_and_in_the_job(tmp_path, slurm_cluster, job_ids):
    sweep_file = tmp_path / "sweep.txt"
    common = f"sweep_name=oor paths.log_dir={tmp_path} debug=fdr logger=csv print_config=false"
    sweep_file.write_text(f"seed=0 {common}\nseed=1 {common}\n")
    partition = (
        subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0].rstrip("*")
    )

    def sweep_cli(*args):
        return sweep_tool("cli", *args, timeout=120)

    # `submit` refuses an array larger than the file: nothing reaches SLURM
    refused = sweep_cli("submit", str(sweep_file), "--array=0-2", "--mem=1G", f"--output={tmp_path}/%A_%a.out")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: --array=0-2 asks for index 2, but {sweep_file} has 2 sweep points "
        "(indices 0-1): use --array=0-1; nothing was submitted"
    )
    assert not list(tmp_path.glob("*.out"))

    # plain sbatch cannot check: the task itself fails at once, naming the valid range
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=2",
            "--mem=1G",
            f"--output={tmp_path}/%A_%a.out",
            "slurm/array.sbatch",
            str(sweep_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    array_id = submitted.stdout.strip().split(";")[0]
    job_ids.append(array_id)
    wait_for(lambda: queue_empty(array_id), 300, f"job {array_id} to end")
    out = wait_for(
        lambda: (p := tmp_path / f"{array_id}_2.out").exists() and "error:" in p.read_text() and p.read_text(),
        60,
        "the job's error line",
    )
    assert (
        f"error: array index 2 is out of range for {sweep_file}: it has 2 sweep points (indices 0-1); "
        "submit with --array=0-1"
    ) in out
    assert not (tmp_path / "multiruns").exists()  # nothing ran
    state = wait_for(
        lambda: subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", f"{array_id}_2", "-o", "State,ExitCode"], capture_output=True, text=True
        ).stdout.strip(),
        60,
        "sacct",
    )
    assert state.startswith("FAILED|2:0"), state

    # a valid `submit` passes the other options to sbatch (here -p, --mem, --output) and runs every line
    ok = sweep_cli("submit", str(sweep_file), "-p", partition, "--mem=1G", f"--output={tmp_path}/%A_%a.out")
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.startswith(f"sbatch --array=0-1%4 -p {partition} --mem=1G --output=")
    array_id = re.search(r"Submitted batch job (\d+)", ok.stdout).group(1)
    job_ids.append(array_id)
    wait_for(lambda: queue_empty(array_id), 600, f"array {array_id} to finish", interval=2)
    done = summaries(tmp_path / "multiruns" / "oor")
    assert sorted(s["seed"] for s in done.values()) == [0, 1] and all(s["status"] == "completed" for s in done.values())
