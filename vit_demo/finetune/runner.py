"""One fine-tune job at a time for the whole server: its state, who may stop it, its budget,
and the checkpoint card at the end.

The job's state lives here (not in a browser session), so every page and API client sees the
same job; only the session that started it may stop it. A job runs in a worker thread: the
base model and the data are prepared there, then the job body runs (under ``spaces.GPU`` on
ZeroGPU). A stop or an exhausted budget ends it within seconds in every phase; a stop once the
weights are saved keeps the model, without (or with a partial) test.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..card import AccuracyMetrics, Metrics, ModelCard, write_card
from ..data import CLASSES
from ..registry import VITB16, Registry
from ..settings import Settings
from ..notices import notice_of
from ..storage import oldest_first, remove_partial, work_dir
from .job import BUG, JobError, base_timm_name, blocker, prepare, run_train_job
from .policy import (IMAGES_PER_S, WARMUP_STEPS, device_warning, estimate_s, gpu_seconds,
                     on_zero_gpu, projected_s, training_device)
from .request import FinetuneRequest, InvalidRequest
from .store import FinetuneStore, keep_newest

MAX_LOG_LINES = 200
IDLE, STARTING, RUNNING, STOPPING, SAVING, TESTING, DONE, CANCELLED, FAILED = (
    "idle", "starting", "running", "stopping", "saving", "testing", "done", "cancelled", "failed")
ACTIVE = (STARTING, RUNNING, STOPPING, SAVING, TESTING)
log = logging.getLogger(__name__)


class JobBusy(ValueError):
    """A job is already running on this server."""


class NotYourJob(ValueError):
    """Only the session that started a job may stop it."""


@dataclass
class JobState:
    """What a page shows of the server's current (or last) job."""
    id: int = 0
    status: str = IDLE
    request: dict = field(default_factory=dict)
    device: str = ""
    warning: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    eta_s: float | None = None
    images_per_s: float | None = None
    budget_s: float | None = None  # the wall-clock budget this job runs under
    history: list[dict] = field(default_factory=list)  # val at the start, then one row per step
    log: list[str] = field(default_factory=list)
    metrics: dict | None = None  # {"test": evaluate(...)} at the end
    model_key: str | None = None  # the new model's key (its checkpoint name) in the other tabs
    error: str | None = None  # why the job failed, in a visitor's words (the log has the detail)
    started: float | None = None  # time.time()
    finished: float | None = None
    owner: str = field(default="", repr=False)  # session that started the job; never shown

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def summary(self) -> dict:
        """The state without the per-step history and the owner, JSON-ready (the API's view)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name not in ("history", "owner")}
        d["log"] = self.log[-20:]
        if self.metrics:
            test = self.metrics["test"]
            d["metrics"] = {"test_accuracy": test["accuracy"], "test_images": test["images"],
                            "per_class_accuracy": dict(zip(CLASSES, test["per_class_accuracy"]))}
        return d


def resume_key(request: FinetuneRequest) -> str:
    """The same training settings give the same key, so starting a stopped job again resumes
    it. The output name and the test size play no part."""
    ident = {k: v for k, v in asdict(request).items() if k not in ("name", "test_images")}
    ident["config"] = asdict(request.train_config())
    ident["timm"] = base_timm_name() if request.base == VITB16 else None
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class JobRunner:
    """Runs one fine-tuning job at a time for the whole server and keeps its state.

    ``state_dir``: the resume-state folder (default: the app's ``resume`` work folder, the same
    after a restart, so that a job stopped before it can still be resumed); it holds at most
    ``settings.keep_finetuned`` resume states, those of earlier runs counted.
    """

    def __init__(self, registry: Registry, store: FinetuneStore, data_dir: str | None = None,
                 settings: Settings = Settings(), state_dir: Path | None = None):
        self.registry, self.store, self.data_dir, self.settings = registry, store, data_dir, settings
        self.state_dir = Path(state_dir or work_dir("resume"))
        self.device = training_device()
        self._cond = threading.Condition()
        self._state = JobState(device=self.device, warning=device_warning(self.device))
        self._version = 0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._states_written: list[Path] = []  # resume states, oldest first
        remove_partial(self.state_dir)
        for path in oldest_first(self.state_dir.glob("*.safetensors")):
            for old in keep_newest(self._states_written, path, settings.keep_finetuned):
                old.unlink(missing_ok=True)
        self._stop_reason = "stopped"  # how the log words a stop: by the visitor or the budget
        self._refused = ""  # why the warm-up stopped the job (its measured end over the budget)
        self._request: FinetuneRequest | None = None
        self._phase_start = 0.0  # time.monotonic() when the baseline, then the timed steps, began
        self._eval_rate = 0.0  # images/s of the baseline validation, 0 until measured
        self._warm_steps = 0  # steps of this run, until the warm-up check

    # -- reading ------------------------------------------------------------------------
    def snapshot(self) -> JobState:
        """A copy of the current job's state (safe to read while the job runs)."""
        with self._cond:
            return self._copy()

    def _copy(self) -> JobState:
        s = self._state
        return replace(s, request=dict(s.request), history=list(s.history), log=list(s.log))

    async def updates(self, job_id: int | None = None, interval: float = 0.25
                      ) -> AsyncIterator[JobState]:
        """Snapshots of job ``job_id`` (default: the current one) when it has changed, looking
        every ``interval`` seconds, ending with the snapshot in which it is no longer active.
        Asynchronous, so that pages watching a long job hold no worker thread."""
        seen = -1
        while True:
            with self._cond:
                snap = self._copy() if self._version != seen else None
                seen = self._version
            if snap is not None:
                if job_id is not None and snap.id != job_id:
                    return
                yield snap
                if not snap.active:
                    return
                job_id = snap.id
            await asyncio.sleep(interval)

    def wait(self, timeout: float | None = None) -> JobState:
        """Wait until no job is active (or ``timeout`` passes); the state then."""
        with self._cond:
            self._cond.wait_for(lambda: not self._state.active, timeout=timeout)
            return self._copy()

    # -- control ------------------------------------------------------------------------
    def check(self, request: FinetuneRequest) -> float:
        """The checks that need the server: the job can run here (``JobError``: CIFAR-10 or
        the base's weights missing), the base exists, the job fits the budget (and, on ZeroGPU,
        the GPU window); the estimated seconds."""
        problems = []
        blocked = blocker(request.base, self.data_dir)
        if blocked is not None:  # the visitor's words, and the operator's for the log
            raise JobError(blocked.operator, blocked.visitor)
        bases = self.registry.finetune_bases()
        if request.base not in self.registry.keys():
            problems.append(f"base {request.base!r} is not a model of this app; choose one of: "
                            f"{', '.join(bases)}")
        elif request.base not in bases:
            problems.append(f"base {request.base!r} is not a scratch ViT; fine-tune the "
                            f"{VITB16!r} base instead")
        estimate = estimate_s(request, self.device)
        if estimate > self.settings.max_job_s:
            problems.append(f"this job would take about {estimate:,.0f} s here; a job may take at "
                            f"most {self.settings.max_job_s:,} s: use fewer images, epochs or steps")
        if on_zero_gpu():
            gpu_s = gpu_seconds(estimate_s(request, "cuda", setup=False), 10 ** 9)
            if gpu_s > self.settings.zerogpu_max_s:
                problems.append(f"this job would need about {gpu_s} s of GPU time; a job may "
                                f"ask for at most {self.settings.zerogpu_max_s} s: use fewer "
                                "images, epochs or steps")
        if problems:
            raise InvalidRequest("Cannot start the fine-tune: " + "; ".join(problems) + ".")
        return estimate

    def start(self, request: FinetuneRequest, owner: str) -> JobState:
        """Check ``request`` and start it for session ``owner``; the new job's first snapshot."""
        with self._cond:
            if self._state.active:
                running = self._state
                raise JobBusy(
                    f"A fine-tuning job is already running on this server (job {running.id}: "
                    f"{running.request.get('base')} -> {running.request.get('name')}, "
                    f"{running.status}, step {running.step}/{running.total_steps}). Only one job "
                    "runs at a time: wait for it to finish or stop it.")
            estimate = self.check(request)
            self._cancel = threading.Event()
            self._stop_reason, self._refused, self._request = "stopped", "", request
            self._eval_rate, self._warm_steps = 0.0, 0
            self._state = JobState(id=self._state.id + 1, status=STARTING, request=asdict(request),
                                   device=self.device, warning=device_warning(self.device),
                                   total_steps=request.total_steps(), started=time.time(),
                                   budget_s=self.settings.max_job_s, owner=owner)
            self._update(f"job {self._state.id}: fine-tune {request.base} on {request.train_images} "
                         f"images, {request.total_steps()} steps of {request.batch_size}, "
                         f"lr {request.lr:g}{', head only' if request.freeze_backbone else ''}; "
                         f"estimated {estimate:,.0f} s, budget {self.settings.max_job_s:,} s")
            # The job carries the starting request's context (on ZeroGPU: whose GPU quota).
            self._thread = threading.Thread(
                target=contextvars.copy_context().run, name=f"finetune-{self._state.id}",
                args=(self._work, self._state.id, request, self._cancel), daemon=True)
            self._thread.start()
            return self._copy()

    def stop(self, owner: str) -> JobState:
        """Stop the running job (``owner`` must have started it); the state (unchanged if idle)."""
        with self._cond:
            if self._state.active and owner != self._state.owner:
                raise NotYourJob("This job was started by another visitor: only they can stop it. "
                                 "You can watch it here until it ends.")
            if self._state.active and not self._cancel.is_set():
                self._cancel.set()
                self._update("stop requested", status=STOPPING)
            return self._copy()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker thread to end (tests and shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker thread -------------------------------------------------------------------
    def _update(self, line: str | None = None, **changes: Any) -> None:
        """Change the state, add ``line`` (when given) to its log, wake the watchers."""
        with self._cond:  # re-entrant: callers may hold it already
            for k, v in changes.items():
                setattr(self._state, k, v)
            if line:
                self._state.log.append(f"{time.strftime('%H:%M:%S')} {line}")
                del self._state.log[:-MAX_LOG_LINES]
            self._version += 1
            self._cond.notify_all()

    def _work(self, job_id: int, request: FinetuneRequest, cancel: threading.Event) -> None:
        state_path = self.state_dir / f"{resume_key(request)}.safetensors"
        name = self.store.new_name(request.name)
        over_budget = threading.Timer(self.settings.max_job_s, self._over_budget, (job_id,))
        over_budget.daemon = True
        over_budget.start()
        try:  # the folders are made by the first write into them
            job = prepare(request, self.registry, self.data_dir, say=self._update)
            if cancel.is_set():
                return self._end(CANCELLED, "stopped before training; nothing was written")
            saved, test = self._run(job, state_path, name, cancel)
            if saved is None:
                if state_path.exists():  # keep it for a resume; delete the oldest beyond the cap
                    for old in keep_newest(self._states_written, state_path,
                                           self.settings.keep_finetuned):
                        old.unlink(missing_ok=True)
                if self._refused:
                    return self._end(FAILED, self._refused, error=self._refused)
                every = request.train_config().checkpoint_every
                last = self._state.step // every * every  # the last resume state's step
                return self._end(CANCELLED, f"{self._stop_reason} at step {self._state.step}; "
                                 "no model was written"
                                 + (f"; starting the same job again resumes from step {last}"
                                    if last else ""))
            state_path.unlink(missing_ok=True)
            self._save_card(name, saved, test)
        except Exception as exc:
            self.store.tensors_path(name).unlink(missing_ok=True)
            notice = notice_of(exc, BUG)
            if isinstance(exc, ValueError):
                log.warning("fine-tune job %d failed: %s", job_id, notice.operator)
            else:  # a bug of ours
                log.exception("fine-tune job %d failed", job_id)
            self._end(FAILED, "failed: " + notice.visitor, error=notice.visitor)
        finally:
            over_budget.cancel()

    def _over_budget(self, job_id: int) -> None:
        with self._cond:
            if self._state.id == job_id and self._state.active and not self._cancel.is_set():
                self._cancel.set()
                self._stop_reason = "stopped at its time budget"
                self._update(f"the job reached its budget of {self.settings.max_job_s:,} s",
                             status=STOPPING)

    def _end(self, status: str, line: str, **changes: Any) -> None:
        self._update(line, status=status, finished=time.time(), **changes)

    def _run(self, job, state_path: Path, name: str, cancel: threading.Event
             ) -> tuple[ModelCard | None, dict | None]:
        """Iterate the job body: (the untested card of the saved weights, the test metrics);
        (None, None) when stopped before the weights were saved, (card, None) when stopped after."""
        gpu_s = gpu_seconds(estimate_s(job.request, "cuda", setup=False), self.settings.zerogpu_max_s)
        events = run_train_job(job, str(state_path), str(self.store.tensors_path(name)),
                               None if on_zero_gpu() else cancel, gpu_s=gpu_s)
        saved = test = None
        with contextlib.closing(events):
            for kind, value in events:
                if kind == "error":  # the job body logged a bug's traceback itself
                    raise JobError(value["operator"], value["visitor"])
                self._on_event(kind, value, cancel)
                if kind == "saved":
                    saved = value
                elif kind == "result":
                    test = value["test"]
                if cancel.is_set():
                    break
        if saved is None and not cancel.is_set():
            raise JobError("the job ended without a result")
        return saved, test

    def _on_event(self, kind: str, value: Any, cancel: threading.Event) -> None:
        if kind == "log":
            self._update(value)
        elif kind == "started":
            self._phase_start = time.monotonic()
            self._update(f"training {value['trainable']:,} parameters for "
                         f"{value['total_steps']} steps ({value['steps_per_epoch']} per epoch)"
                         + (f"; resumed at step {value['resumed_step']}"
                            if value["resumed_step"] else ""),
                         total_steps=value["total_steps"], step=value["resumed_step"],
                         **({} if cancel.is_set() else {"status": RUNNING}))
        elif kind == "baseline":
            self._eval_rate = self._request.val_images / max(time.monotonic() - self._phase_start,
                                                             1e-3)
            with self._cond:
                self._state.history.append(value)
                self._update(f"step {value['step']}: validation accuracy "
                             f"{value['val_accuracy']:.4f}")
        elif kind == "progress":
            self._progress(value)
        elif kind == "saved":
            self._update("training done; weights saved; testing",
                         **({} if cancel.is_set() else {"status": TESTING}))
        elif kind == "testing":
            self._update(None if value["done"] < value["of"] else f"tested {value['done']} images")

    def _progress(self, p: dict) -> None:
        row = {"step": p["step"], "epoch": p["epoch"], "train_loss": p["loss"],
               "train_accuracy": p["accuracy"], "lr": p["lr"]}
        if p["val_accuracy"] is not None:
            row["val_accuracy"] = p["val_accuracy"]
        with self._cond:
            s = self._state
            rate = p["images_per_s"]
            s.images_per_s = rate if s.images_per_s is None else 0.8 * s.images_per_s + 0.2 * rate
            s.step, s.total_steps, s.epoch, s.eta_s = p["step"], p["total_steps"], p["epoch"], p["eta_s"]
            s.history.append(row)
            self._warm_steps += 1  # timed from the end of the first step (its set-up aside)
            if self._warm_steps == 1:
                self._phase_start = time.monotonic()
            elif self._warm_steps == 1 + WARMUP_STEPS:
                self._check_projection(p, (time.monotonic() - self._phase_start) / WARMUP_STEPS)
            if p["val_accuracy"] is not None:
                self._update(f"step {p['step']}/{p['total_steps']} epoch {p['epoch']:.2f}: "
                             f"validation accuracy {p['val_accuracy']:.4f}")
            elif p["step"] % max(1, p["total_steps"] // 10) == 0 or p["step"] == 1:  # every tenth
                self._update(f"step {p['step']}/{p['total_steps']}: loss {p['loss']:.4f}, "
                             f"train accuracy {p['accuracy']:.3f}, {s.images_per_s:.0f} images/s")
            else:
                self._update()

    def _check_projection(self, p: dict, step_s: float) -> None:
        """After the warm-up (``step_s``: seconds a step, measured): the job's end projected
        from its measured speed. One that would overrun its budget is stopped now, with the
        measured rate (instead of at the budget, with nothing kept)."""
        request, s = self._request, self._state
        eval_rate = self._eval_rate or IMAGES_PER_S[(self.device, request.base_kind)][1]
        total = projected_s(time.time() - s.started, step_s * (p["total_steps"] - p["step"]),
                            request, p["epoch"], eval_rate)
        if total <= self.settings.max_job_s or self._cancel.is_set():
            return
        rate = request.batch_size / step_s
        self._refused = (
            f"Stopped after a warm-up of {p['step']} steps: at the {rate:,.0f} images/s "
            f"measured here the job would take about {total:,.0f} s, over its budget of "
            f"{self.settings.max_job_s:,} s. Use fewer images, epochs or steps (about "
            f"{self.settings.max_job_s / total:.0%} of this job fits).")
        self._cancel.set()
        self._update(self._refused, status=STOPPING)

    def _save_card(self, name: str, card: ModelCard, test: dict | None) -> None:
        """Write the card (the pair is then complete), evict beyond the cap, make it usable."""
        self._update(status=SAVING)
        if test:
            card = replace(card, metrics=Metrics(test=AccuracyMetrics.from_dict(test)))
        write_card(self.store.folder, name, card)
        for old in self.store.added(name):
            self.registry.forget(old)
            self._update(f"removed the oldest fine-tuned model {old!r} (this server keeps "
                         f"{self.settings.keep_finetuned})")
        done = (f"test accuracy {test['accuracy']:.4f} on {test['images']} images" if test
                else "stopped during the test: the model is kept, untested")
        self._end(DONE, f"{done}; the model is '{name}' in the other tabs",
                  metrics={"test": test} if test else None, model_key=name)
