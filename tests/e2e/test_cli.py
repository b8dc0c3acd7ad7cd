"""The command line as a user runs it, in subprocesses: the default run, the console script from
another directory, multirun, DDP on 2 CPU processes, and clear one-line errors on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparseforge.lightning.loggers import run_id_for
from tests.helpers.cli import run_cli
from tests.helpers.wandb_records import logged_config, of_type, offline_run_dirs, records_when_finished


def summaries(root: Path) -> list[Path]:
    return sorted((root / "outputs").rglob("summary.json"))


def no_traceback(proc: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in proc.stdout + proc.stderr


TRAIN_PY = Path(__file__).parents[2] / "train.py"


def run_on_a_fresh_machine(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run in ``tmp_path`` as on a fresh machine: an empty HOME and no W&B variables or key."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), SPARSEFORGE_ROOT=str(tmp_path))
    return subprocess.run(
        args, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_default_run_offline_under_60s_with_table_and_run_dir(tmp_path):
    """`python train.py` with no arguments, as on a fresh machine: no W&B key, no mode set."""
    start = time.perf_counter()
    proc = run_on_a_fresh_machine([sys.executable, str(TRAIN_PY)], tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, f"default run took {elapsed:.1f} s"
    assert "results" in proc.stdout and "test/acc" in proc.stdout  # the results table
    (summary_path,) = summaries(tmp_path)
    run_dir = summary_path.parent
    assert run_dir.parent == tmp_path / "outputs" / "runs"  # timestamped, under outputs/
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    assert summary["config"]["dataset"]["_target_"].endswith("Digits")
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    # no key configured: W&B went offline by itself, never prompted, and finished the run
    (offline,) = offline_run_dirs(run_dir)
    records = records_when_finished(offline)
    assert of_type(records, "exit") and logged_config(records)["seed"] == 0


@pytest.mark.slow
def test_console_script_works_from_any_directory(tmp_path):
    script = Path(sys.executable).parent / "sparseforge-train"
    assert script.exists(), "pip install -e . installs the sparseforge-train console script"
    env = {k: v for k, v in os.environ.items() if k != "SPARSEFORGE_ROOT"}
    proc = subprocess.run(
        [str(script), "debug=fdr"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary_path,) = summaries(tmp_path)  # outputs/ of the working directory
    assert json.loads(summary_path.read_text())["status"] == "completed"


@pytest.mark.slow
def test_multirun_over_two_values_gives_two_runs_each_finished(tmp_path):
    proc = run_cli(
        [
            "-m",
            "seed=0,1",
            "logger=wandb",
            "logger.wandb.mode=offline",
            "scenario=iid",
            "scenario.epochs_per_task=1",
            "print_config=false",
        ],
        env={"SPARSEFORGE_ROOT": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = summaries(tmp_path)
    assert len(found) == 2
    runs = [json.loads(p.read_text()) for p in found]
    assert sorted(r["seed"] for r in runs) == [0, 1] and all(r["status"] == "completed" for r in runs)
    ids = set()
    for path in found:
        (offline,) = offline_run_dirs(path.parent)
        run_id = run_id_for(path.parent)
        assert offline.name.endswith(run_id)
        records = records_when_finished(offline)
        assert of_type(records, "exit")  # each job's W&B run was finished before the next began
        ids.add(run_id)
    assert len(ids) == 2


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_cpu_runs_two_gloo_processes(tmp_path):
    proc = run_cli(
        [
            "hardware=ddp_cpu",
            "logger=csv",
            "scenario=iid",
            "scenario.epochs_per_task=2",
            "run_name=ddp",
            "print_config=false",
        ],
        env={"SPARSEFORGE_ROOT": str(tmp_path)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    summary = json.loads((tmp_path / "outputs" / "ddp" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["trainer"]["devices"] == 2
    assert proc.stdout.count("run directory:") == 1  # only rank 0 prints the results
    assert (tmp_path / "outputs" / "ddp" / "checkpoints" / "last.ckpt").exists()


# -- bad input: one clear line, non-zero exit, nothing left behind --------------------------------------
BAD_INPUTS = {
    "unknown dataset": (["dataset=imagenet_xxl"], ["dataset/imagenet_xxl", "cifar100"]),
    "unknown model": (["model=transformer_xxl"], ["model/transformer_xxl", "small_cnn"]),
    "unknown timm model": (["model=timm", "model.name=resnet_does_not_exist"], ["model.name", "resnet_does_not_exist"]),
    "wrong type": (["optimizer.lr=abc"], ["optimizer.lr", "abc"]),
    "unknown key": (["optimizer.lrr=0.1"], ["lrr"]),
    "added unknown key": (["+optimizer.lrr=0.1"], ["optimizer", "lrr"]),
    "bad seed": (["seed=abc"], ["seed"]),
    "missing data, no download": (
        ["dataset=mnist", "dataset.download=false"],
        ["MNIST/raw", "train-images-idx3-ubyte", "SPARSEFORGE_DATA_DIR"],
    ),
    "missing data, download fails": (["dataset=cifar10"], ["cifar-10-batches-py", "data_batch_1", "download"]),
    "missing tiny-imagenet": (["dataset=tiny_imagenet"], ["tiny-imagenet-200", "wnids.txt", "val_annotations.txt"]),
    "zero epochs": (["trainer.max_epochs=0"], ["trainer.max_epochs", ">= 1"]),
    "negative epochs": (["trainer.max_epochs=-3"], ["trainer.max_epochs", ">= 1"]),
    "endless epochs": (["trainer.max_epochs=-1"], ["trainer.max_epochs", "max_steps"]),
    "negative workers": (["data.num_workers=-1"], ["data.num_workers", ">= 0"]),
    "run name leaving outputs": (["run_name=../../escaped"], ["run_name", "leaves the outputs folder"]),
    "misspelled key": (["sparsity.densty=0.1"], ["sparsity.densty", "did you mean `density`?"]),
    "misspelled top-level key": (["seeed=1"], ["seeed", "did you mean `seed`?"]),
    # a config error is found before the (missing) data is touched
    "config error, data missing": (["+experiment=sparcl_cifar10", "method.buffer_size=-1"], ["method.buffer_size"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_with_one_clear_error_and_no_run_dir(case, tmp_path):
    args, must_mention = BAD_INPUTS[case]
    data = tmp_path / "data"
    env = {
        "SPARSEFORGE_ROOT": str(tmp_path),
        "SPARSEFORGE_DATA_DIR": str(data),
        # offline, even where the internet is reachable: downloads go to a closed port
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    proc = run_cli([*args, "print_config=false"], env=env, timeout=300)
    assert proc.returncode != 0
    assert no_traceback(proc), proc.stderr[-3000:]
    err = proc.stderr
    for word in must_mention:
        assert word in err, f"{word!r} not in: {err[-1500:]}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if proc.returncode == 2:  # sparseforge's own errors: exactly one line
        assert len(errors) == 1
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())
    assert not data.exists() or not any(p.is_dir() for p in data.rglob("*"))  # no empty dataset folders
    assert not (tmp_path.parent / "escaped").exists()
    if case == "config error, data missing":
        assert "cifar" not in err.lower()


def test_a_config_error_comes_before_the_config_tree(tmp_path):
    proc = run_cli(["sparsity.density=0"], env={"SPARSEFORGE_ROOT": str(tmp_path)})  # print_config=true
    assert proc.returncode == 2 and no_traceback(proc)
    assert "sparsity.density" in proc.stderr.strip().splitlines()[-1]
    assert "update_rule" not in proc.stdout  # the tree was not printed: validated first


def test_outputs_under_a_file_or_on_a_read_only_folder_are_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    proc = run_cli([f"paths.log_dir={a_file}/outputs", "print_config=false"], env={"SPARSEFORGE_ROOT": str(tmp_path)})
    assert proc.returncode == 2 and no_traceback(proc), proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "paths.log_dir" in line and f"{a_file} is a file" in line

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    with read_only_folder(read_only):
        proc = run_cli(
            [f"paths.log_dir={read_only}/outputs", "print_config=false"], env={"SPARSEFORGE_ROOT": str(tmp_path)}
        )
    assert proc.returncode == 2 and no_traceback(proc), proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "paths.log_dir" in line and str(read_only) in line


class read_only_folder:
    """``folder`` made read-only: a read-only tmpfs mounted over it as root (root ignores file
    permissions), else its permissions."""

    def __init__(self, folder: Path):
        self.folder, self.mounted = folder, False

    def __enter__(self):
        if os.geteuid() == 0:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(self.folder)], check=True)
            self.mounted = True
        else:
            self.folder.chmod(0o555)

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", str(self.folder)], check=True)
        else:
            self.folder.chmod(0o755)


def test_a_truncated_dataset_file_is_named_with_the_way_out(tmp_path):
    from tests.helpers.fake_data import write_mnist_like

    data = tmp_path / "data"
    write_mnist_like(data)
    images = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1000])
    env = {"SPARSEFORGE_ROOT": str(tmp_path), "SPARSEFORGE_DATA_DIR": str(data)}
    proc = run_cli(["dataset=mnist", "print_config=false"], env=env)
    assert proc.returncode == 2 and no_traceback(proc), proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert f"{images} is corrupt or truncated" in line and "delete it and download again" in line
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_gpu_without_gpu_is_a_one_line_error(tmp_path):
    proc = run_cli(["hardware=gpu", "print_config=false"], env={"SPARSEFORGE_ROOT": str(tmp_path)})
    assert proc.returncode == 2 and no_traceback(proc)
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "hardware" in line and "no CUDA GPU" in line and "hardware=cpu" in line
    assert not (tmp_path / "outputs").exists()


def test_help_lists_the_groups():
    proc = run_cli(["--help"])
    assert proc.returncode == 0
    for group in ("dataset", "model", "hardware", "logger", "experiment", "debug"):
        assert f"{group}:" in proc.stdout


def test_wandb_unset_key_does_not_prompt(tmp_path):
    """Without a key, mode auto resolves to offline: no prompt even on an interactive stdin."""
    if shutil.which("script") is None:
        pytest.skip("needs util-linux `script` for a pseudo-terminal")
    cmd = f"{sys.executable} {TRAIN_PY} debug=fdr logger=wandb print_config=false"
    proc = run_on_a_fresh_machine(["script", "-qec", cmd, "/dev/null"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Enter your choice" not in proc.stdout
    (summary_path,) = summaries(tmp_path)
    assert offline_run_dirs(summary_path.parent)
