"""Read what a W&B offline run really wrote: the records of its ``run-<id>.wandb`` file.

An offline run of wandb 0.31 keeps the logged config only in that binary file (there is no
``files/config.yaml`` until a sync), and wandb no longer ships a Python reader for it. The format
is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of records,
each ``crc32 (4) | length (2, little-endian) | type (1: full, 2: first, 3: middle, 4: last)`` and a
payload; the payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    payloads, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zero padding up to the end of the block
            pos += left_in_block
            continue
        if pos + HEADER + length > len(data):  # a record still being written: read it later
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
            pending = b""
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def of_type(records: list[Any], kind: str) -> list[Any]:
    return [r for r in records if r.WhichOneof("record_type") == kind]


def logged_config(records: list[Any]) -> dict[str, Any]:
    """The run config as W&B has it: every ``config`` update record merged, values decoded."""
    config: dict[str, Any] = {}
    for record in of_type(records, "config"):
        for item in record.config.update:
            config[item.key] = json.loads(item.value_json)
    return config


def offline_run_dirs(run_dir: str | Path) -> list[Path]:
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def records_when_finished(offline_dir: str | Path, timeout: float = 120.0) -> list[Any]:
    """The records of a finished offline run. ``wandb.finish()`` returns once the SDK has handed
    the exit over to the wandb-core service, which writes the file on its own schedule (seconds
    on a loaded machine), so wait for the exit record rather than read too early."""
    import time

    path = next(Path(offline_dir).glob("run-*.wandb"))
    deadline = time.monotonic() + timeout
    from google.protobuf.message import DecodeError

    while True:
        try:
            records = read_records(path)
        except DecodeError:  # caught mid-write (the service writes in its own time): read again
            if time.monotonic() > deadline:
                raise
            records = []
        if of_type(records, "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.5)
