"""Fault injection: kill, signal, fill the disk, corrupt, race and diverge real `python train.py`
runs, and check each outcome against an uninterrupted run.

    python experiments/fault_injection.py                      # >= 20 kills and every other fault
    python experiments/fault_injection.py --kills 6            # the short version CI runs

Every run is ``python train.py`` in a process of its own, on a tiny config that takes seconds
(digits, MLP, ER + RigL, 25 epochs of 9 steps, a checkpoint every 4 steps and every epoch).

- **Kills** (SIGKILL), then ``ckpt_path=auto`` reruns until the run completes, compared with the
  uninterrupted run: every weight, the masks, the accuracy matrix, the metrics, the per-layer
  non-zeros and every CSV row, bit for bit. Kill points: a random time during training (from
  outside), half-way through writing the K-th checkpoint, just before its rename, half-way
  through appending to the CSV log, right after ``Trainer.fit`` returns, and half-way through
  writing the final summary.json (inside the process: this script's ``--child`` mode wraps
  train.py's main with the hook).
- **Signals**: SIGTERM and SIGINT after the first checkpoint: exit 143 / 130, status
  ``interrupted``, and the resumed run is identical.
- **Disk full** (a small tmpfs; needs root): one ``error:`` line naming the file, status
  ``failed``, no temporary files; with room again the resumed run is identical.
- **Corrupt checkpoint**: a truncated last.ckpt falls back to its backup (identical result); with
  no readable backup, one line with the way out.
- **Concurrent runs** of one run_name: the second refuses with the first one's PID and host, the
  first ends identical; a killed run's "running" status reads as interrupted, and its rerun says so.
- **NaN**: ``optimizer.lr=1e6`` stops at once with one line naming the loss, step and lr.
- **Sweep** with a bad point: the good points complete, the aggregator names the bad one.

Prints one line per trial and a final one-line JSON. The machine's speed does not matter: every
check is an exact comparison, not a timing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's sparseforge, in this process and the children
BASE = [
    "logger=csv",
    "torch_threads=1",
    "print_config=false",
    "trainer.enable_progress_bar=false",
    "run_name=run",
    "ckpt_path=auto",
    "callbacks.model_checkpoint.every_n_train_steps=4",
]
CHECKPOINTS = 75  # about how many checkpoints the run writes (25 epochs, every 4th of 225 steps)


# -- the child: train.py with a kill point --------------------------------------------------------------
def _kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class HoldUntil(pl.Callback):
    """Waits at the end of the first epoch until ``path`` exists (the computation is unchanged):
    the run is alive, and holds its run directory, until the test has met it."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        end = time.monotonic() + 600
        while not self.path.exists() and time.monotonic() < end:
            time.sleep(0.05)


def hold_until(path: Path) -> list[str]:
    return ["+callbacks.hold._target_=__main__.HoldUntil", f"+callbacks.hold.path={path}"]


def install_kill_point(spec: str) -> None:
    """``event[:K]``: SIGKILL this process at the K-th such event."""
    event, _, k = spec.partition(":")
    k = int(k or 1)
    count = {"n": 0}

    def due() -> bool:
        count["n"] += 1
        return count["n"] == k

    if event == "ckpt_write":  # half-way through writing the K-th checkpoint
        from sparseforge.utils import io

        original_open = io.open_temp_file

        class HalfThenKill:
            def __init__(self, file):
                self.file, self.written = file, 0

            def write(self, data):
                n = self.file.write(data)
                self.written += n
                if self.written > 100_000:  # a checkpoint is about 250 kB
                    self.file.flush()
                    _kill_now()
                return n

            def __getattr__(self, name):
                return getattr(self.file, name)

        def open_temp_file(path):
            file = original_open(path)
            return HalfThenKill(file) if ".ckpt" in path.name and due() else file

        io.open_temp_file = open_temp_file
    elif event == "ckpt_rename":  # just before the K-th checkpoint replaces last.ckpt
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith("last.ckpt") and due():
                _kill_now()
            return original_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif event == "csv_write":  # half-way through the K-th append to metrics.csv
        from sparseforge.lightning import csv_log

        original_save = csv_log._ResumableWriter.save

        def save(self):
            if self.metrics and self._previous is None and Path(self.metrics_file_path).is_file() and due():
                with open(self.metrics_file_path, "a") as file:
                    file.write("0.12345,0.6")  # a row cut short: no line end
                _kill_now()
            return original_save(self)

        csv_log._ResumableWriter.save = save
    elif event == "fit_end":  # after Trainer.fit returned, before summary.json says completed
        import lightning.pytorch as pl

        original_fit = pl.Trainer.fit

        def fit(self, *args, **kwargs):
            original_fit(self, *args, **kwargs)
            _kill_now()

        pl.Trainer.fit = fit
    elif event == "summary_final":  # half-way through writing the completed summary.json
        from sparseforge.utils import io

        original_write = io.atomic_write_json

        def atomic_write_json(path, data):
            if data.get("status") == "completed":
                tmp = io.temp_path_for(path)
                text = json.dumps(io._jsonable(data), default=str)
                tmp.write_text(text[: len(text) // 2])
                _kill_now()
            return original_write(path, data)

        io.atomic_write_json = atomic_write_json
    elif event != "none":
        raise SystemExit(f"unknown kill point {spec!r}")


def child(spec: str, overrides: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if started in the background
    install_kill_point(spec)
    sys.argv = [str(REPO / "train.py"), *overrides]
    from sparseforge.train import main

    main()


# -- the parent: runs, checks, figures --------------------------------------------------------------------
def command(overrides: list[str], spec: str = "none") -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--", *overrides]


def environment(root: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    src = str(REPO / "src")
    env.update(
        SPARSEFORGE_ROOT=str(root),
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([src, str(REPO), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def run(root: Path, overrides: list[str], spec: str = "none", timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(overrides, spec), cwd=REPO, env=environment(root), capture_output=True, text=True, timeout=timeout
    )


def start(root: Path, overrides: list[str], spec: str = "none") -> subprocess.Popen:
    return subprocess.Popen(
        command(overrides, spec),
        cwd=REPO,
        env=environment(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_dir(root: Path, name: str = "run") -> Path:
    return root / "outputs" / name


def summary(path: Path) -> dict | None:
    try:
        return json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for(condition, timeout: float = 300, proc: subprocess.Popen | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def finish(root: Path, overrides: list[str] = BASE, tries: int = 3) -> list[str]:
    """Rerun with ckpt_path=auto until summary.json says completed; the error lines of each try."""
    errors = []
    for _ in range(tries):
        if (summary(run_dir(root)) or {}).get("status") == "completed":
            break
        done = run(root, overrides)
        errors += [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return errors


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def differences(got: Path, ref: Path) -> list[str]:
    """What differs between two finished runs (empty: bit-identical)."""
    import torch

    out = []
    a, b = summary(got) or {}, summary(ref) or {}
    if a.get("status") != "completed":
        return [f"status {a.get('status')!r}"]
    for key in ("metrics",):
        if a.get(key) != b.get(key):
            out.append(key)
    if (a.get("cl") or {}).get("acc_matrix") != (b.get("cl") or {}).get("acc_matrix"):
        out.append("cl.acc_matrix")
    if (a.get("sparsity") or {}).get("layer_nnz") != (b.get("sparsity") or {}).get("layer_nnz"):
        out.append("sparsity.layer_nnz")
    ca = torch.load(got / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    cb = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    sa, sb = ca["state_dict"], cb["state_dict"]
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
        out.append("weights")
    if (ca["global_step"], ca["epoch"]) != (cb["global_step"], cb["epoch"]):
        out.append("step/epoch")
    masks_a = _masks(ca)
    masks_b = _masks(cb)
    if masks_a.keys() != masks_b.keys() or not all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a):
        out.append("masks")
    if _csv(got) != _csv(ref):
        out.append("csv rows")
    debris = [p.name for p in got.rglob("*") if ".tmp-" in p.name]
    if debris:
        out.append(f"temporary files {debris}")
    return out


def _masks(ckpt: dict) -> dict:
    for key, state in ckpt.get("callbacks", {}).items():
        if "SparsityCallback" in key and state.get("masks"):
            return dict(state["masks"]["masks"])
    return {}


def _csv(path: Path) -> list[dict]:
    with open(path / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


class Report:
    def __init__(self):
        self.kills: list[dict] = []
        self.checks: dict[str, bool] = {}

    def kill(self, name: str, triggered: bool, diffs: list[str], errors: list[str]) -> None:
        ok = triggered and not diffs
        self.kills.append({"trial": name, "triggered": triggered, "identical": ok, "differences": diffs})
        verdict = "identical" if ok else ("kill point not reached" if not triggered else f"DIFFERS: {diffs}")
        print(f"kill  {name:<22} {verdict}" + (f"  (rerun said: {errors[-1]})" if errors else ""), flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks[name] = ok
        print(f"fault {name:<22} {'ok' if ok else 'FAILED'}  {detail}", flush=True)


# -- trials -----------------------------------------------------------------------------------------------
def kill_trials(n: int, rng: random.Random) -> list[str]:
    # the first six cover every kind of point; later ones add random times and checkpoint writes
    kinds = ["time", "ckpt_write", "ckpt_rename", "csv_write", "fit_end", "summary_final", "time", "ckpt_write"]
    trials = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind in ("ckpt_write", "ckpt_rename"):
            kind += f":{rng.randint(1, CHECKPOINTS)}"
        elif kind == "csv_write":
            kind += f":{rng.randint(1, 20)}"
        elif kind == "time":
            kind += f":{rng.random():.3f}"
        trials.append(kind)
    return trials


def kill_trial(work: Path, ref: Path, spec: str, train_seconds: float, report: Report) -> None:
    root = work / spec.replace(":", "_")
    if spec.startswith("time:"):
        # a random moment of training; the machine's speed varies, so a run that finished first
        # is started again (in a fresh folder) and killed at half the delay
        delay = float(spec.split(":")[1]) * train_seconds
        for attempt in range(4):
            root = work / f"{spec.replace(':', '_')}_{attempt}"
            proc = start(root, BASE)
            running = wait_for(lambda r=root: (summary(run_dir(r)) or {}).get("status") == "running", proc=proc)
            if running:
                time.sleep(delay)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            triggered = running and proc.returncode == -signal.SIGKILL
            if triggered:
                break
            delay /= 2
    else:
        done = run(root, BASE, spec)
        triggered = done.returncode == -signal.SIGKILL
    errors = finish(root)
    report.kill(spec, triggered, differences(run_dir(root), ref) if triggered else [], errors)


def signal_trial(work: Path, ref: Path, signum: int, report: Report) -> None:
    name = signal.Signals(signum).name
    root = work / name
    proc = start(root, BASE)
    wait_for(lambda: (run_dir(root) / "checkpoints" / "last.ckpt").exists(), proc=proc)
    proc.send_signal(signum)
    proc.wait(timeout=300)
    status = (summary(run_dir(root)) or {}).get("status")
    expected = 128 + signum
    finish(root)
    diffs = differences(run_dir(root), ref)
    ok = proc.returncode == expected and status == "interrupted" and not diffs
    report.check(
        name, ok, f"exit {proc.returncode} (want {expected}), status {status!r}, resumed: {diffs or 'identical'}"
    )


def disk_full_trial(work: Path, ref: Path, report: Report) -> None:
    if os.geteuid() != 0:
        report.check("disk_full", True, "skipped: mounting a small tmpfs needs root")
        return
    root = work / "disk_full"
    root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(root)], check=True)
    try:
        done = run(root, BASE)
        lines = error_lines(done)
        saved = summary(run_dir(root)) or {}
        debris = [p.name for p in root.rglob("*") if ".tmp-" in p.name]
        first = (
            done.returncode == 1
            and len(lines) == 1
            and "No space left on device writing" in lines[0]
            and saved.get("status") == "failed"
            and not debris
            and "Traceback" not in done.stderr
        )
        subprocess.run(["mount", "-o", "remount,size=8m", str(root)], check=True)
        finish(root)
        diffs = differences(run_dir(root), ref)
        report.check(
            "disk_full",
            first and not diffs,
            f"exit {done.returncode}, {lines}, status {saved.get('status')!r}, debris {debris}, "
            f"resumed with room: {diffs or 'identical'}",
        )
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def corrupt_trials(work: Path, ref: Path, report: Report) -> None:
    root = work / "corrupt_backup"
    run(root, BASE, "ckpt_write:20")
    last = run_dir(root) / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    done = run(root, BASE)
    said = done.stdout + done.stderr
    warned = "is unreadable (truncated or corrupt)" in said and "resuming from the previous" in said
    finish(root)
    diffs = differences(run_dir(root), ref)
    report.check(
        "corrupt_last_ckpt", warned and not diffs, f"fell back to the backup: {warned}, {diffs or 'identical'}"
    )

    root = work / "corrupt_no_backup"
    run(root, BASE, "ckpt_write:2")  # one checkpoint: no backup yet
    last = run_dir(root) / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:-10])
    done = run(root, BASE)
    lines = error_lines(done)
    ok = (
        done.returncode == 1
        and len(lines) == 1
        and f"checkpoint {last} is unreadable" in lines[0]
        and "ckpt_path=null" in lines[0]
        and "Traceback" not in done.stderr
    )
    report.check("corrupt_no_backup", ok, f"exit {done.returncode}, {lines}")


def concurrent_trial(work: Path, ref: Path, report: Report) -> None:
    root = work / "concurrent"
    release = work / "release_concurrent"
    first = start(root, [*BASE, *hold_until(release)])
    wait_for(lambda: (run_dir(root) / "checkpoints" / "last.ckpt").exists(), proc=first)
    second = run(root, [*BASE, *hold_until(release)])
    release.touch()
    first.wait(timeout=600)
    lines = error_lines(second)
    want = f"is in use by PID {first.pid} on {socket.gethostname()}"
    diffs = differences(run_dir(root), ref)
    ok = second.returncode == 2 and len(lines) == 1 and want in lines[0] and first.returncode == 0 and not diffs
    report.check("concurrent_runs", ok, f"second: exit {second.returncode} {lines}; first: {diffs or 'identical'}")

    root = work / "stale_running"
    proc = start(root, [*BASE, *hold_until(work / "never")])
    wait_for(lambda: (run_dir(root) / "checkpoints" / "last.ckpt").exists(), proc=proc)
    proc.kill()
    proc.wait()
    from sparseforge.sweeps.aggregate import load_runs

    written = (summary(run_dir(root)) or {}).get("status")
    read = [r.status for r in load_runs(run_dir(root))]
    rerun = run(root, BASE)
    said = "ended without a status: it was interrupted" in rerun.stdout + rerun.stderr
    diffs = differences(run_dir(root), ref)
    ok = written == "running" and read == ["interrupted"] and said and not diffs
    report.check(
        "stale_running", ok, f"summary {written!r} reads as {read}; rerun said so: {said}; {diffs or 'identical'}"
    )


def nan_trial(work: Path, report: Report) -> None:
    root = work / "nan"
    done = run(root, [*BASE, "optimizer.lr=1e6"])
    lines = error_lines(done)
    status = (summary(run_dir(root)) or {}).get("status")
    ok = (
        done.returncode == 1
        and len(lines) == 1
        and "loss is nan" in lines[0]
        and "step" in lines[0]
        and "lr 1e+06" in lines[0]
        and status == "failed"
        and "Traceback" not in done.stderr
    )
    report.check("nan", ok, f"exit {done.returncode}, {lines}, status {status!r}")


def sweep_trial(work: Path, report: Report) -> None:
    root = work / "sweep"
    tiny = ["logger=csv", "print_config=false", "scenario=iid", "scenario.epochs_per_task=1", "torch_threads=1"]
    done = run(root, ["-m", "sweep_name=s", "ckpt_path=auto", *tiny, "sparsity.density=0.1,0,0.2"])
    sweep_dir = root / "outputs" / "multiruns" / "s"
    statuses = sorted(
        (
            (summary(p.parent) or {}).get("config", {}).get("sparsity", {}).get("density"),
            (summary(p.parent) or {}).get("status"),
        )
        for p in sweep_dir.glob("*/summary.json")
    )
    agg = subprocess.run(
        [sys.executable, "-m", "sparseforge.sweeps.aggregate", str(sweep_dir), "--strict"],
        cwd=REPO,
        env=environment(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    named = [
        line
        for line in agg.stdout.splitlines()
        if line.strip().startswith("not started") and "sparsity.density=0" in line
    ]
    ok = (
        done.returncode != 0
        and statuses == [(0.1, "completed"), (0.2, "completed")]
        and agg.returncode == 1
        and len(named) == 1
    )
    report.check(
        "sweep_bad_point",
        ok,
        f"sweep exit {done.returncode}, runs {statuses}, aggregate --strict exit {agg.returncode}, {named}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=22, help="SIGKILL trials (default 22)")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill points")
    parser.add_argument("--work", help="folder for the runs (default: a fresh temporary folder, removed after)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(args.child, rest[1:] if rest[:1] == ["--"] else rest)
        return

    rng = random.Random(args.seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fault_injection_"))
    report = Report()
    started = time.monotonic()
    try:
        ref_root = work / "reference"
        t0 = time.monotonic()
        proc = start(ref_root, BASE)
        wait_for(lambda: (summary(run_dir(ref_root)) or {}).get("status") == "running", proc=proc)
        t1 = time.monotonic()
        proc.wait(timeout=600)
        train_seconds = time.monotonic() - t1
        ref = run_dir(ref_root)
        assert (summary(ref) or {}).get("status") == "completed", proc.stderr.read()
        print(f"reference: {time.monotonic() - t0:.1f} s, of which {train_seconds:.1f} s after start-up", flush=True)

        for i, spec in enumerate(kill_trials(args.kills, rng)):
            kill_trial(work / f"kill{i:02d}", ref, spec, train_seconds, report)  # a folder per trial
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal_trial(work, ref, signum, report)
        disk_full_trial(work, ref, report)
        corrupt_trials(work, ref, report)
        concurrent_trial(work, ref, report)
        nan_trial(work, report)
        sweep_trial(work, report)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    triggered = [k for k in report.kills if k["triggered"]]
    result = {
        "kills": len(report.kills),
        "kills_triggered": len(triggered),
        "kills_identical": sum(k["identical"] for k in triggered),
        "not_identical": [k["trial"] for k in triggered if not k["identical"]],
        "faults": report.checks,
        "faults_ok": sum(report.checks.values()),
        "faults_total": len(report.checks),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))
    ok = result["kills_identical"] == result["kills_triggered"] == result["kills"] and all(report.checks.values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
