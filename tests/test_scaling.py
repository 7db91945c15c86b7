"""Many volumes on many processes: ``torchrun -m mrisr.upsample`` shards the cases (each exactly
once), writes one summary, and a rerun keeps complete outputs and redoes a truncated one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_affine, starts_processes
from mrisr.data import shard
from mrisr.io import Volume, load_volume, save_volume


@pytest.mark.parametrize("n", [0, 1, 5, 16, 17])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_case_exactly_once(n, world):
    parts = [shard(n, rank, world) for rank in range(world)]
    flat = sorted(i for part in parts for i in part)
    assert flat == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    with pytest.raises(ValueError):
        shard(n, world, world)


def _torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29500 + os.getpid() % 1000), "-m", "mrisr.upsample", *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


@starts_processes
def test_two_gloo_ranks_write_every_output_once_and_resume(tmp_path):
    (tmp_path / "in").mkdir()
    for n in range(5):
        data = np.random.default_rng(n).uniform(0, 1000, size=(8, 8, 3)).astype(np.float32)
        save_volume(Volume(data, make_affine("LPS", (0.7, 0.7, 3.0))), tmp_path / "in" / f"case{n}.nii.gz")
    args = ["in", "--plane", "through", "--factor", "3", "--method", "bicubic", "-o", "out", "--report", "all.json"]
    first = _torchrun(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == [f"case{n}_sr.nii.gz" for n in range(5)]
    summary = json.loads((tmp_path / "all.json").read_text())
    assert summary["world_size"] == 2 and [c["index"] for c in summary["cases"]] == list(range(5))
    assert [c["rank"] for c in summary["cases"]] == [0, 1, 0, 1, 0]
    assert first.stdout.count("5 volumes: 5 written") == 1  # one table, from rank 0

    # truncate one output (a crash elsewhere, an incomplete copy): the rerun redoes it alone
    victim = tmp_path / "out" / "case3_sr.nii.gz"
    victim.write_bytes(victim.read_bytes()[:200])
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir() if p != victim}
    second = _torchrun(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    statuses = [c["status"] for c in json.loads((tmp_path / "all.json").read_text())["cases"]]
    assert statuses == ["exists", "exists", "exists", "ok", "exists"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir() if p != victim} == kept
    assert load_volume(victim).shape == (8, 8, 9)
