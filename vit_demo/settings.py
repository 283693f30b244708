"""The limits a deployment sets, read once from the environment at start-up.

Defaults are safe for a public Space, where every visitor is anonymous: a private deployment
may raise them (``VIT_DEMO_<FIELD>``, e.g. ``VIT_DEMO_MAX_JOB_S=3600``); see docs/spaces.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

from .inference import MAX_FILE_BYTES, MAX_PIXELS


@dataclass(frozen=True)
class Settings:
    max_pixels: int = MAX_PIXELS  # largest image (width x height) decoded, e.g. 6000 x 4000
    max_file_mb: int = MAX_FILE_BYTES // 2 ** 20  # largest upload, refused before any handler runs
    cache_mb: int = 2048  # Gradio's folder of uploads and returned files: oldest deleted beyond it
    queue_size: int = 64  # requests waiting beyond this are refused at once ("queue full")
    client_requests: int = 3  # requests one client may have waiting or running (HTTP 429 beyond)
    sessions: int = 500  # pages whose state Gradio keeps (~250 KB each); the least recent go
    max_job_s: int = 600  # a fine-tune's wall-clock budget: estimated before start, enforced after
    keep_finetuned: int = 3  # fine-tuned checkpoints kept on disk and in memory; oldest evicted
    zerogpu_max_s: int = 120  # GPU seconds one ZeroGPU job may ask for (visitors have minutes a day)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        values = {}
        for f in fields(cls):
            raw = env.get(f"VIT_DEMO_{f.name.upper()}")
            if raw is not None:
                if not raw.isdigit() or int(raw) < 1:
                    raise ValueError(f"VIT_DEMO_{f.name.upper()} must be a whole number from 1, "
                                     f"not {raw!r}")
                values[f.name] = int(raw)
        return cls(**values)

    @property
    def max_bytes(self) -> int:
        return self.max_file_mb * 2 ** 20

    @property
    def cache_bytes(self) -> int:
        return self.cache_mb * 2 ** 20
