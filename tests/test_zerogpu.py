"""The ZeroGPU adapter with the real ``spaces`` package on the CPU: ``SPACES_ZERO_GPU=true``
makes ``spaces.GPU`` wrap the job body; the GPU window it asks for is the runner's estimate,
capped; nothing but the job's own GPU work runs inside the window."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vit_demo.finetune import runner as runner_module
from vit_demo.finetune.job import run_train_job, train_job
from vit_demo.finetune.request import FinetuneRequest, InvalidRequest
from vit_demo.finetune.policy import gpu_seconds

REPO = Path(__file__).resolve().parent.parent

# Run in a child process: ``spaces`` patches torch when it imports on ZeroGPU.
CHILD = r"""
import torch
from spaces.zero import client

from vit_demo.finetune import job


class Scheduled(Exception):
    pass


def schedule(task_id, request, duration, gpu_size):
    raise Scheduled(duration)


client.schedule = schedule
assert job.run_train_job is not job.train_job and hasattr(job.run_train_job, "zerogpu")
try:
    next(job.run_train_job(None, "state", "tensors", None, gpu_s=77))
except Scheduled as asked:
    print("asked", asked.args[0])
"""


def test_off_zerogpu_the_job_body_is_not_wrapped():
    assert run_train_job is train_job


def test_on_zerogpu_spaces_wraps_the_job_and_asks_for_its_window():
    env = {**os.environ, "SPACES_ZERO_GPU": "true",
           "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9/", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    asked = [line for line in done.stdout.splitlines() if line.startswith("asked")]
    assert asked and asked[0].split()[1] in ("77", "77.0", "0:01:17"), done.stdout


def test_gpu_window_is_the_estimate_with_a_margin_and_capped():
    assert gpu_seconds(10, cap_s=120) == 25  # 1.5 x 10 + 10
    assert gpu_seconds(1000, cap_s=120) == 120


def test_runner_refuses_jobs_over_the_zerogpu_window(tmp_path, data_dir, monkeypatch):
    from conftest import save_tiny_scratch
    from vit_demo.finetune.runner import JobRunner
    from vit_demo.finetune.store import FinetuneStore
    from vit_demo.registry import SCRATCH_CHECKPOINT, Registry
    from vit_demo.settings import Settings

    monkeypatch.setattr(runner_module, "on_zero_gpu", lambda: True)
    save_tiny_scratch(tmp_path / "w", SCRATCH_CHECKPOINT)
    runner = JobRunner(Registry(tmp_path / "w", allow_hub=False), FinetuneStore(tmp_path / "ft", 3),
                       data_dir, Settings(zerogpu_max_s=60, max_job_s=10 ** 6))
    runner.check(FinetuneRequest(train_images=20_000, epochs=3, batch_size=128))
    with pytest.raises(InvalidRequest, match=r"about \d+ s of GPU time; a job may ask for at most 60 s"):
        runner.check(FinetuneRequest(train_images=40_000, epochs=30, batch_size=128))
