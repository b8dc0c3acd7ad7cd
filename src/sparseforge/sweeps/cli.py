"""``sparseforge-sweep``: a sweep as a plain ``sbatch --array`` job, one overrides line per point.

sparseforge-sweep plan sweep_name=dens sparsity.density=0.05,0.1,0.2 seed=0,1,2 > sweep.txt
sparseforge-sweep plan +study=cl_split_mnist > sweep.txt
    writes one line of overrides per sweep point (Hydra's own sweep syntax and expansion, a
    study's declared axes included: the same points ``python train.py -m ...`` would run,
    in the same directories), checks every point first, leaves out
    points that already completed, and prints the matching sbatch line to stderr:
    sbatch --array=0-8%4 --output=outputs/multiruns/dens/.slurm/%A_%a.out slurm/array.sbatch sweep.txt
sparseforge-sweep run sweep.txt 3 [extra overrides]
    runs line 3 (what slurm/array.sbatch does with $SLURM_ARRAY_TASK_ID), resuming with
    ckpt_path=auto; an index outside the file is an error.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

from sparseforge.errors import SparseforgeError
from sparseforge.sweeps.plan import SweepError, default_sweep_name, prepare_run_points

ARRAY_SCRIPT = Path(__file__).resolve().parents[3] / "slurm" / "array.sbatch"


def _stdout_file() -> str | None:
    """The file stdout is redirected to (``> sweep.txt``), if it is one (Linux /proc)."""
    try:
        if stat.S_ISREG(os.fstat(sys.stdout.fileno()).st_mode):
            return os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
    except (OSError, ValueError):
        pass
    return None


def _short(path: str | Path) -> str:
    """``path`` relative to the current directory when it is inside it (shorter sbatch lines)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _script_arg() -> str:
    """slurm/array.sbatch, relative when run from the repository root."""
    return "slurm/array.sbatch" if Path("slurm/array.sbatch").resolve() == ARRAY_SCRIPT else str(ARRAY_SCRIPT)


def plan(args: argparse.Namespace) -> int:
    # Every line must name the sweep (a study names its own), or each point would get a fresh
    # timestamped directory and a requeued job could not find its checkpoint.
    name = default_sweep_name(args.overrides)
    points = prepare_run_points(args.overrides, default_sweep_name=name)
    if points and f"sweep_name={name}" in points[0].overrides:
        print(f"note: no sweep_name given, using sweep_name={name}", file=sys.stderr)
    todo = [p for p in points if args.all or p.finished is None]
    lines = "".join(p.line + "\n" for p in todo)
    target = args.output or _stdout_file()
    if args.output:
        Path(args.output).write_text(lines)
    else:
        sys.stdout.write(lines)
        sys.stdout.flush()

    done = len(points) - len(todo)
    print(f"{len(points)} sweep points" + (f", {done} already completed (left out)" if done else ""), file=sys.stderr)
    if not todo:
        print("nothing to submit", file=sys.stderr)
        return 0
    sweep_dir = Path(str(points[0].cfg.hydra.sweep.dir))
    log_dir = sweep_dir / ".slurm"
    log_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output folder
    script = _script_arg()
    throttle = f"%{args.parallel}" if args.parallel else ""
    file_arg = shlex.quote(_short(target)) if target else "<overrides file>"
    print(
        f"sbatch --array=0-{len(todo) - 1}{throttle} --output={shlex.quote(_short(log_dir))}/%A_%a.out {script} {file_arg}",
        file=sys.stderr,
    )
    return 0


def sweep_lines(path: str | Path) -> list[str]:
    """The overrides lines of a file written by ``plan`` (blank and ``#`` lines not counted)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    except OSError as exc:
        raise SweepError(f"cannot read the overrides file {path}: {exc.strerror}") from None
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _valid_range(n: int) -> str:
    return f"indices 0-{n - 1}" if n else "none: the file has no lines"


def read_line(path: str | Path, index: int) -> list[str]:
    """The overrides of line ``index`` (0-based)."""
    lines = sweep_lines(path)
    if not 0 <= index < len(lines):
        raise SweepError(
            f"array index {index} is out of range for {path}: it has {len(lines)} sweep points ({_valid_range(len(lines))}); "
            f"submit with --array=0-{max(len(lines) - 1, 0)}"
        )
    return shlex.split(lines[index])


def array_indices(spec: str) -> list[int]:
    """The indices of an ``sbatch --array`` spec: ``0-15``, ``0,6,16-32``, ``0-15:4``, each with an optional ``%N``."""
    indices = []
    for item in spec.split("%", 1)[0].split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", item.strip())
        if not match:
            raise SweepError(f"--array={spec} is not an array spec (examples: 0-8%4, 0,3,5, 0-15:4)")
        first = int(match[1])
        last = int(match[2]) if match[2] else first
        indices += range(first, last + 1, int(match[3] or 1))
    return indices


def submit(args: argparse.Namespace) -> int:
    """sbatch slurm/array.sbatch FILE, after checking that every array index has a line."""
    lines = sweep_lines(args.file)
    if not lines:
        raise SweepError(f"{args.file} has no sweep points: nothing to submit")
    spec = args.array or f"0-{len(lines) - 1}" + (f"%{args.parallel}" if args.parallel else "")
    outside = [i for i in array_indices(spec) if i >= len(lines)]
    if outside:
        raise SweepError(
            f"--array={spec} asks for index {max(outside)}, but {args.file} has {len(lines)} sweep points "
            f"({_valid_range(len(lines))}): use --array=0-{len(lines) - 1}; nothing was submitted"
        )
    cmd = ["sbatch", f"--array={spec}", *args.sbatch_options, _script_arg(), args.file]
    print(shlex.join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode


def run(args: argparse.Namespace) -> int:
    index = args.index if args.index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if index is None:
        raise SweepError("no index given and $SLURM_ARRAY_TASK_ID is not set (not an array job)")
    try:
        index = int(index)
    except ValueError:
        raise SweepError(f"index must be an integer, got {index!r}") from None
    overrides = read_line(args.file, index)
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"sweep point {index} (restart {restart}): {shlex.join(overrides)}", file=sys.stderr, flush=True)
    from sparseforge.train import main as train_main

    # ckpt_path=auto last: a requeued job resumes from last.ckpt, a completed point is skipped.
    # hydra.mode=RUN: the line is one point, also where its study would start a multirun.
    sys.argv = ["sparseforge-train", *overrides, *args.extra, "ckpt_path=auto", "hydra.mode=RUN"]
    train_main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseforge-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="write one overrides line per sweep point and print the sbatch line")
    p.add_argument("-o", "--output", help="write the lines here instead of stdout")
    p.add_argument(
        "-p", "--parallel", type=int, default=4, help="at most this many array tasks at once (%%N; 0: no limit)"
    )
    p.add_argument("--all", action="store_true", help="also list points that already completed")
    p.add_argument("overrides", nargs="*", help="Hydra overrides with sweeps, as for python train.py -m")
    p.set_defaults(func=plan)
    r = sub.add_parser("run", help="run one line of an overrides file (slurm/array.sbatch)")
    r.add_argument("file")
    r.add_argument("index", nargs="?", help="0-based line; default $SLURM_ARRAY_TASK_ID")
    r.add_argument("extra", nargs="*", help="more overrides appended to the line")
    r.set_defaults(func=run)
    s = sub.add_parser(
        "submit", help="sbatch the array after checking every index has a line; other options go to sbatch"
    )
    s.add_argument("file")
    s.add_argument("--array", help="sbatch --array spec (default 0-<lines-1>%%<parallel>)")
    s.add_argument("--parallel", type=int, default=4, help="the %%N throttle of the default --array")
    s.set_defaults(func=submit)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.sbatch_options = unknown
    try:
        sys.exit(args.func(args))
    except SparseforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
