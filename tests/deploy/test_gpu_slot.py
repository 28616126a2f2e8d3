"""deploy/gpu-slot.sh: each worker replica claims a GPU no other replica holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest


@pytest.fixture
def slot(repo, tmp_path, unavailable):
    """Run gpu-slot on a fake host with two GPUs; returns a starter of `gpu-slot CMD`."""
    if shutil.which("flock") is None:
        unavailable("flock (util-linux) is not installed")
    devices = tmp_path / "dev"
    devices.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (devices / name).touch()
    env = os.environ | {"GPU_SLOT_DEVICES": str(devices), "GPU_SLOT_LOCKS": str(tmp_path / "locks")}
    for inherited in ("WORKER_GPUS", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        env.pop(inherited, None)
    started: list[subprocess.Popen] = []

    def start(*command: str, **extra_env: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(repo / "deploy" / "gpu-slot.sh"), *command],
            env=env | extra_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def gpu_of(process: subprocess.Popen) -> str:
    return process.stdout.readline().strip()


def test_replicas_get_distinct_gpus_until_none_is_left(slot):
    holder = "echo $CUDA_VISIBLE_DEVICES; exec sleep 30"
    first = slot("sh", "-c", holder)
    assert gpu_of(first) == "0"
    second = slot("sh", "-c", holder)
    assert gpu_of(second) == "1"

    third = slot("sh", "-c", holder)
    assert third.wait(timeout=10) == 75
    assert "already has a worker" in third.stderr.read()

    first.kill()  # a stopped worker frees its GPU at once
    first.wait()
    deadline = time.monotonic() + 10
    while True:
        fourth = slot("sh", "-c", holder)
        if gpu_of(fourth) == "0":
            break
        assert time.monotonic() < deadline, "GPU 0 was not freed"


def test_worker_gpus_restricts_and_no_gpu_runs_unchanged(slot, tmp_path):
    chosen = slot("sh", "-c", "echo $CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER", WORKER_GPUS="1")
    assert gpu_of(chosen) == "1 PCI_BUS_ID"
    cpu = slot("sh", "-c", "echo ${CUDA_VISIBLE_DEVICES-unset}", GPU_SLOT_DEVICES=str(tmp_path / "none"))
    assert gpu_of(cpu) == "unset"
