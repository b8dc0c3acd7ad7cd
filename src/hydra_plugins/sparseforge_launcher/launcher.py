"""Hydra's submitit SLURM launcher with sparseforge's pre-flight and resume (``hardware=slurm``).

Before anything is submitted it composes and checks every sweep point and asks the cluster
whether one job of the requested size fits (``cluster.py``); a problem is one ``error:`` line
and exit code 2. Points that already completed (``ckpt_path=auto``, summary.json "completed")
are not submitted again: their saved result is returned to the sweeper instead. The remaining
points go out as ONE job array, exactly as the stock launcher does, and this process waits for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


class SparseforgeSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sparseforge.errors import SparseforgeError
        from sparseforge.sweeps.cluster import check_request
        from sparseforge.sweeps.plan import objective, prepare_sweep_points

        try:
            points = prepare_sweep_points(self.hydra_context.config_loader, self.config, job_overrides)
            check_request(self.params)
        except SparseforgeError as exc:
            self._remove_fresh_sweep_dir()
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)

        todo = [p for p in points if p.finished is None]
        if len(todo) < len(points):
            log.info(f"{len(points) - len(todo)} of {len(points)} sweep points already completed: not submitted again")
            for point in points:
                if point.finished is not None:
                    log.info(f"\tcompleted: {' '.join(point.overrides)} -> {point.run_dir}")
        submitted = iter(super().launch([p.overrides for p in todo], initial_job_idx) if todo else [])
        returns = []
        for point in points:
            if point.finished is None:
                returns.append(next(submitted))
                continue
            task_cfg = point.cfg.copy()
            with open_dict(task_cfg):
                del task_cfg["hydra"]
            ret = JobReturn(
                overrides=point.overrides,
                cfg=task_cfg,
                hydra_cfg=OmegaConf.create({"hydra": point.cfg.hydra}),
                working_dir=str(point.run_dir),
                task_name=str(point.cfg.hydra.job.name),
                status=JobStatus.COMPLETED,
            )
            ret.return_value = objective(point.cfg, point.finished.get("metrics", {}))
            returns.append(ret)
        return returns

    def _remove_fresh_sweep_dir(self) -> None:
        """The sweeper creates the sweep dir (with multirun.yaml) before launching; after a
        pre-flight error, remove it again unless it holds runs from earlier."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
            (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
            sweep_dir.rmdir()
