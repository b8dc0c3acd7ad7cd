"""Check a SLURM resource request against the cluster before anything is submitted.

SLURM itself rejects an impossible request at submission, but submitit turns that into a long
traceback from inside Hydra ("Requested node configuration is not available", "Invalid generic
resource (gres) specification"). This asks ``scontrol`` what the partition's nodes have and
answers with one line that names the setting, what was asked and what the cluster offers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sparseforge.errors import ConfigError


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    partitions: list[str] = field(default_factory=list)


@dataclass
class Partition:
    name: str
    default: bool
    max_time_min: float | None  # None: unlimited
    nodes: list[Node] = field(default_factory=list)


def _field(line: str, key: str) -> str | None:
    match = re.search(rf"(?:^|\s){key}=(\S*)", line)
    return match.group(1) if match else None


def gpu_count(gres: str | None) -> int:
    """GPUs in a GRES string: ``gpu:a100:4(S:0-1),gpu:2`` -> 6; ``(null)`` -> 0."""
    if not gres or gres == "(null)":
        return 0
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if parts[-1].isdigit() else 1
    return total


def parse_time_min(text: str | None) -> float | None:
    """SLURM time in minutes, None if unlimited: ``30`` (min), ``30:15`` (min:s), ``1:00:00``,
    ``2-12`` (days-hours), ``2-12:30``, ``2-12:30:00``."""
    if text is None or text.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    if "-" in text:
        days, rest = text.split("-", 1)
        hours, minutes, seconds = ([int(p) for p in rest.split(":")] + [0, 0])[:3]
        return int(days) * 24 * 60 + hours * 60 + minutes + seconds / 60
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + parts[2] / 60
    return parts[0] + (parts[1] / 60 if len(parts) == 2 else 0)


def _scontrol(*args: str) -> list[str]:
    if shutil.which("scontrol") is None:
        raise ConfigError(
            "hydra.launcher",
            "SLURM's scontrol is not on PATH here, so nothing can be submitted",
            "run on a SLURM login node, or start the local cluster: sudo slurm/start-local-slurm.sh",
        )
    result = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ConfigError("hydra.launcher", f"scontrol {' '.join(args)} failed: {result.stderr.strip()}")
    return [line for line in result.stdout.splitlines() if line.strip()]


def query_partitions() -> dict[str, Partition]:
    """Partitions with their nodes, from ``scontrol show partition/node -o``."""
    partitions = {}
    for line in _scontrol("show", "partition", "-o"):
        name = _field(line, "PartitionName")
        if name:
            partitions[name] = Partition(
                name, _field(line, "Default") == "YES", parse_time_min(_field(line, "MaxTime"))
            )
    for line in _scontrol("show", "node", "-o"):
        node = Node(
            name=_field(line, "NodeName") or "?",
            cpus=int(_field(line, "CPUTot") or 0),
            memory_mb=int(_field(line, "RealMemory") or 0),
            gpus=gpu_count(_field(line, "Gres")),
            partitions=(_field(line, "Partitions") or "").split(","),
        )
        for name in node.partitions:
            if name in partitions:
                partitions[name].nodes.append(node)
    return partitions


def requested_gpus(params: Mapping[str, Any]) -> tuple[int, str]:
    """GPUs per node a submitit-launcher config asks for, and the setting that asks."""
    if params.get("gpus_per_node"):
        return int(params["gpus_per_node"]), "gpus_per_node"
    if params.get("gpus_per_task"):
        return int(params["gpus_per_task"]) * int(params.get("tasks_per_node") or 1), "gpus_per_task"
    return gpu_count(params.get("gres")), "gres"


def check_request(
    params: Mapping[str, Any], partitions: Mapping[str, Partition] | None = None, prefix: str = "hydra.launcher"
) -> Partition:
    """Raise ConfigError if no node of the partition can run one job of ``params``.

    ``params`` are the submitit launcher's settings (partition, mem_gb, cpus_per_task,
    tasks_per_node, gpus_per_node / gpus_per_task / gres, nodes, timeout_min).
    """
    partitions = query_partitions() if partitions is None else partitions
    name = params.get("partition")
    if name is None:
        defaults = [p for p in partitions.values() if p.default]
        if not defaults:
            raise ConfigError(f"{prefix}.partition", "the cluster has no default partition", ", ".join(partitions))
        partition = defaults[0]
    elif name not in partitions:
        raise ConfigError(f"{prefix}.partition", f"no partition {name!r} on this cluster", ", ".join(partitions))
    else:
        partition = partitions[name]
    nodes = partition.nodes
    where = f"partition {partition.name}"
    if not nodes:
        raise ConfigError(f"{prefix}.partition", f"{where} has no nodes")

    n_nodes = int(params.get("nodes") or 1)
    if n_nodes > len(nodes):
        raise ConfigError(f"{prefix}.nodes", f"asks for {n_nodes} nodes, {where} has {len(nodes)}", f"<= {len(nodes)}")
    mem_gb = params.get("mem_gb")
    max_mem = max(n.memory_mb for n in nodes)
    if mem_gb and float(mem_gb) * 1024 > max_mem:
        raise ConfigError(
            f"{prefix}.mem_gb",
            f"asks for {mem_gb} GB per node, the largest node of {where} has {max_mem / 1024:.1f} GB",
            f"<= {int(max_mem // 1024)}",
        )
    cpus = int(params.get("cpus_per_task") or 1) * int(params.get("tasks_per_node") or 1)
    max_cpus = max(n.cpus for n in nodes)
    if cpus > max_cpus:
        raise ConfigError(
            f"{prefix}.cpus_per_task",
            f"asks for {cpus} CPUs per node (cpus_per_task x tasks_per_node), "
            f"the largest node of {where} has {max_cpus}",
            f"cpus_per_task x tasks_per_node <= {max_cpus}",
        )
    gpus, gpu_key = requested_gpus(params)
    max_gpus = max(n.gpus for n in nodes)
    if gpus > max_gpus:
        have = "no GPUs" if max_gpus == 0 else f"at most {max_gpus} GPUs per node"
        raise ConfigError(
            f"{prefix}.{gpu_key}",
            f"asks for {gpus} GPUs per node, {where} has {have}",
            "null or 0 on this partition" if max_gpus == 0 else f"<= {max_gpus}, or a partition with GPUs",
        )
    timeout = params.get("timeout_min")
    if timeout and partition.max_time_min is not None and float(timeout) > partition.max_time_min:
        raise ConfigError(
            f"{prefix}.timeout_min",
            f"asks for {timeout} min, {where} allows at most {partition.max_time_min:g} min",
            f"<= {partition.max_time_min:g}",
        )
    return partition
