"""The training run: stages, logging, validation, checkpoints and resume.

Reads top to bottom: set-up (device, ranks, run directory, model, data), then
for each stage the step loop. Only rank 0 writes to the run directory:

* ``config.yaml`` — the resolved run config;
* ``metrics.jsonl`` — one line per log step (``"kind": "train"``) and per
  validation (``"kind": "val"``);
* ``checkpoints/last.pt`` (every ``save_every`` steps and at each stage's end),
  ``checkpoints/best.pt`` (best validation score), ``checkpoints/<stage>.pt``
  (each stage's final weights). All are our checkpoint format: the official
  key layout plus ``train_state`` with the optimizer, scaler, schedule
  position, every rank's random state and data position, so a killed run
  resumes exactly where its last checkpoint was taken.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from model.checkpoints import save_checkpoint
from model.modeling import ChineseCLIP, build_model
from runtime.errors import CheckpointError, ConfigError, DataError
from runtime.files import atomic_path, write_atomically
from runtime.images import PreprocessConfig
from runtime.tokenizer import ChineseTokenizer, default_tokenizer
from sources import open_source
from trainer.data.augment import AugmentConfig, TrainTransform
from trainer.data.loader import Batch, LoaderState, StreamSpec, build_loader, source_size
from trainer.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from trainer.optim import build_optimizer, cosine_lr, set_lr
from trainer.run_config import DataSection, RunConfig, StageSection
from trainer.step import MicroBatch, StepOptions, TrainForward, train_step
from trainer.validate import RetrievalSet, ZeroShotSet, retrieval_set, validate, zeroshot_set

log = logging.getLogger("cnclip.train")

# Keys that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {"resume", "data.workers", "log_every", "save_every", "torch_threads"}


@dataclass
class TrainState:
    """Where the run stands; saved in every checkpoint."""

    stage: int = 0
    stage_step: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    elapsed_s: float = 0.0  # training wall time so far, across resumptions
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    ranks: list[dict[str, Any]] = field(default_factory=list)  # per rank: rng, loader

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------ run directory


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in changed if k not in _RESUMABLE_CHANGES]


def _find_resume(config: RunConfig, run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.pt"
    if config.resume not in ("auto", "never"):
        path = Path(config.resume)
        if not path.is_file():
            raise ConfigError(f"resume: {path} is not a checkpoint file")
        return path
    if not last.is_file():
        return None
    if config.resume == "never":
        raise ConfigError(
            f"{run_dir} already holds a run (checkpoints/last.pt); resume it with "
            "resume=auto or choose another run_dir"
        )
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        changes = _config_changes(saved, config.to_dict())
        if changes:
            raise ConfigError(
                f"{run_dir} holds a run with another config (changed: {', '.join(changes[:6])}); "
                "choose another run_dir to start a new run"
            )
    return last


def _load_state(path: Path) -> tuple[dict[str, torch.Tensor], TrainState]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: one line, not a traceback
        raise CheckpointError(f"{path}: cannot resume from it ({exc})") from exc
    if not isinstance(raw, dict) or "train_state" not in raw:
        raise CheckpointError(f"{path}: not a training checkpoint (no train_state)")
    state = TrainState(**raw["train_state"])
    return raw["state_dict"], state


def _write_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _truncate_metrics(path: Path, global_step: int) -> None:
    """Drop lines logged after the checkpoint we resume from, so the curve has no repeats."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line).get("step", 0) <= global_step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by the kill, or not ours
    write_atomically(path, "".join(line + "\n" for line in kept).encode("utf-8"))


# ------------------------------------------------------------------ random state


def _rng_snapshot() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
    }


def _rng_restore(snapshot: dict[str, Any]) -> None:
    torch.set_rng_state(snapshot["torch"])
    if snapshot["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snapshot["cuda"])
    random.setstate((3, tuple(snapshot["python"]), None))


def _gather_rank_states(info: DistInfo, mine: dict[str, Any]) -> list[dict[str, Any]]:
    if not info.distributed:
        return [mine]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


# --------------------------------------------------------------------- the loop


class Trainer:
    """One run: build with :meth:`setup`, then :meth:`fit`."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", 0)))
        self.info = init_distributed(self.device)
        self.run_dir = Path(config.run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.amp_dtype = self._amp_dtype()
        self.state = TrainState()
        self.validation: RetrievalSet | ZeroShotSet | None = None
        self._pending_best = False
        self.model: ChineseCLIP
        self.tokenizer: ChineseTokenizer

    def _amp_dtype(self) -> torch.dtype | None:
        precision = self.config.precision
        if precision == "auto":
            if self.device.type != "cuda":
                return None
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    # -------------------------------------------------------------- set-up
    def setup(self) -> None:
        config, info = self.config, self.info
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        resume_from = _find_resume(config, self.run_dir)
        torch.manual_seed(config.seed + info.rank)
        random.seed(config.seed + info.rank)
        if resume_from is None:
            self.model, report = config.model.initial_model()
            for line in report.sources:
                log.info("init: %s", line)
            if report.missing or report.unexpected:
                log.warning(
                    "init: %d weights start random (missing), %d unused (unexpected)",
                    len(report.missing),
                    len(report.unexpected),
                )
        else:  # the initial weights are not needed (nor read) again
            self.model = build_model(config.model.model_config(), init=False)
            weights, self.state = _load_state(resume_from)
            self.model.load_state_dict(weights)
            log.info(
                "resuming from %s: stage %d, step %d",
                resume_from,
                self.state.stage,
                self.state.global_step,
            )
        self.model.to(self.device)
        if config.model.channels_last:
            self.model.visual.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.tokenizer = default_tokenizer()
        if self.model.config.context_length != self.tokenizer.context_length:
            self.tokenizer = ChineseTokenizer(context_length=self.model.config.context_length)
        self.train_source = self._open(config.data)
        self.validation = self._validation_set()
        if info.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(config.to_dict(), allow_unicode=True, sort_keys=False)
            write_atomically(self.run_dir / "config.yaml", text.encode("utf-8"))
            if resume_from is not None:
                _truncate_metrics(self.metrics_path, self.state.global_step)
        barrier()

    def _open(self, data: DataSection) -> Any:
        options: dict[str, Any] = {}
        if data.kind == "official":
            options["split"] = data.split
        if data.kind == "imagefolder" and data.class_names:
            options["class_names"] = data.class_names
        if data.kind == "catalog" and data.root:
            options["root"] = data.root
        return open_source(data.kind, data.path, **options)

    def _validation_set(self) -> RetrievalSet | ZeroShotSet | None:
        section = self.config.validation
        if section.data is None or not self.info.is_main:
            return None
        source = self._open(section.data)
        if section.task == "zeroshot":
            return zeroshot_set(
                source, source.class_names, section.data.templates, section.data.max_samples
            )
        return retrieval_set(source, section.data.max_samples)

    # -------------------------------------------------------------- stages
    def fit(self) -> dict[str, Any]:
        """Run the remaining stages; returns the last validation metrics (rank 0)."""
        last_metrics: dict[str, Any] = {}
        for index in range(self.state.stage, len(self.config.stages)):
            last_metrics = self._run_stage(index)
        if self.info.is_main:
            log.info("done: %d steps; checkpoints in %s", self.state.global_step, self.ckpt_dir)
        return last_metrics

    def _apply_lock(self, stage: StageSection) -> None:
        locked = stage.lock_image
        for param in self.model.visual.parameters():
            param.requires_grad_(not locked)
        self.model.train()
        if locked:  # LiT: no gradients and frozen BatchNorm statistics
            self.model.visual.eval()

    def _stage_steps(self, stage: StageSection) -> int:
        if stage.steps is not None:
            return stage.steps
        size = source_size(
            self.train_source, self.config.data.max_samples, self.config.data.num_samples
        )
        if size is None:
            raise ConfigError(
                f"stage {stage.name}: epochs need the dataset size; set data.num_samples "
                "(WebDataset shards without a manifest) or give steps"
            )
        assert stage.epochs is not None
        return max(1, round(stage.epochs * size / stage.batch_size))

    def _micro_batch_size(self, stage: StageSection) -> int:
        parts = self.info.world_size * stage.accum_freq
        if stage.batch_size % parts:
            raise ConfigError(
                f"stage {stage.name}: batch_size {stage.batch_size} is not divisible by "
                f"{self.info.world_size} ranks x accum_freq {stage.accum_freq}"
            )
        return stage.batch_size // parts

    def _loader(self, index: int, stage: StageSection, resumed: dict[str, Any] | None) -> Any:
        data = self.config.data
        streams = max(1, data.workers)
        loader_state = LoaderState.start(streams)
        if resumed is not None:
            saved = LoaderState.from_dict(resumed["loader"])
            if saved.streams == streams:
                loader_state = saved
            else:
                log.warning(
                    "data.workers changed from %d to %d: the data position restarts at epoch %d",
                    saved.streams,
                    streams,
                    saved.epoch + 1,
                )
                loader_state.positions = [(saved.epoch + 1, 0)] * streams
        vision = self.model.config.vision
        augment = data.augment
        transform = TrainTransform(
            PreprocessConfig(image_size=vision.image_size),
            AugmentConfig(
                scale=augment.scale,
                ratio=augment.ratio,
                hflip=augment.hflip,
                autoaugment=augment.autoaugment,
                pad_crop=augment.pad_crop,
            ),
        )
        spec = StreamSpec(
            source=self.train_source,
            batch_size=self._micro_batch_size(stage),
            rank=self.info.rank,
            world_size=self.info.world_size,
            streams=streams,
            seed=self.config.seed,
            stage=index,
            tokenizer=self.tokenizer,
            transform=transform,
            templates=tuple(data.templates),
            shuffle_buffer=data.shuffle_buffer,
            max_samples=data.max_samples,
            state=loader_state,
        )
        return build_loader(spec, data.workers, pin_memory=self.device.type == "cuda"), spec

    def _run_stage(self, index: int) -> dict[str, Any]:
        config, info, state = self.config, self.info, self.state
        stage = config.stages[index]
        total = self._stage_steps(stage)
        resuming = state.stage == index and state.stage_step > 0
        self._apply_lock(stage)
        self.model.set_grad_checkpointing(
            image=config.model.grad_checkpointing, text=config.model.grad_checkpointing
        )
        if hasattr(self.model.visual, "patch_dropout"):
            self.model.visual.patch_dropout = config.model.patch_dropout
        optimizer = build_optimizer(
            self.model,
            lr=stage.lr,
            weight_decay=stage.weight_decay,
            betas=config.optim.betas,
            eps=config.optim.eps,
        )
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        # Every rank's saved random state and data position, once, right after a resume.
        saved = state.ranks if len(state.ranks) == info.world_size else []
        if state.ranks and not saved:
            log.warning("world size changed: random state and data position start afresh")
        rank_state = saved[info.rank] if saved else None
        state.ranks = []
        if rank_state is not None:
            _rng_restore(rank_state["rng"])
        if resuming:
            if state.optimizer is not None:
                optimizer.load_state_dict(state.optimizer)
            if scaler is not None and state.scaler is not None:
                scaler.load_state_dict(state.scaler)
        else:
            state.stage, state.stage_step = index, 0
            rank_state = None  # a new stage starts its data afresh
        wrapped: torch.nn.Module = TrainForward(self.model)
        if info.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(wrapped, device_ids=device_ids)
        loader, spec = self._loader(index, stage, rank_state)
        options = StepOptions(
            lock_image=stage.lock_image,
            world_size=info.world_size,
            amp_dtype=self.amp_dtype,
            grad_clip=config.optim.grad_clip,
            multi_positive=config.loss.multi_positive,
        )
        if info.is_main:
            log.info(
                "stage %s: %d steps of %d pairs (%s), lr %g, image tower %s",
                stage.name,
                total,
                stage.batch_size,
                f"{info.world_size} ranks x {stage.accum_freq} x {spec.batch_size}",
                stage.lr,
                "locked" if stage.lock_image else "trained",
            )
        metrics = self._loop(stage, total, wrapped, optimizer, scaler, loader, spec, options)
        state.stage, state.stage_step = index + 1, 0
        state.optimizer = state.scaler = None
        self._save("last.pt", spec.state, optimizer=None, scaler=None)
        if info.is_main:
            self._copy_checkpoint("last.pt", f"{stage.name}.pt")
        return metrics

    def _loop(
        self,
        stage: StageSection,
        total: int,
        wrapped: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        loader: Any,
        spec: StreamSpec,
        options: StepOptions,
    ) -> dict[str, Any]:
        config, info, state = self.config, self.info, self.state
        batches: Iterator[Batch] = iter(loader)
        progress = _Progress(stage.name, total, state.stage_step, info.is_main)
        metrics: dict[str, Any] = {}
        window_start, window_samples, data_wait = time.perf_counter(), 0, 0.0
        clock = time.perf_counter()
        while state.stage_step < total:
            fetch_start = time.perf_counter()
            micro = []
            for _ in range(stage.accum_freq):
                batch = _next_batch(batches)
                spec.state.positions[batch.stream] = (batch.epoch, batch.cursor)
                spec.state.batches += 1
                spec.state.corrupt += batch.corrupt
                images = batch.images
                if config.model.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                micro.append(MicroBatch(images, batch.input_ids, batch.groups).to(self.device))
            data_wait += time.perf_counter() - fetch_start
            lr = cosine_lr(state.stage_step, base_lr=stage.lr, warmup=stage.warmup, total=total)
            set_lr(optimizer, lr)
            result = train_step(wrapped, self.model, micro, optimizer, scaler, options)
            if not math.isfinite(result.loss):
                raise FloatingPointError(
                    f"loss is {result.loss} at step {state.global_step}: lower the learning rate "
                    "or use bf16/fp32"
                )
            state.stage_step += 1
            state.global_step += 1
            now = time.perf_counter()
            state.elapsed_s += now - clock
            clock = now
            window_samples += stage.batch_size
            progress.update(result.loss)
            last = state.stage_step == total
            if state.stage_step % config.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                corrupt = all_reduce_sum([float(spec.state.corrupt)], self.device)[0]
                record = {
                    "kind": "train",
                    "step": state.global_step,
                    "stage": stage.name,
                    "stage_step": state.stage_step,
                    "epoch": round(spec.state.epoch + 0.0, 3),
                    "loss": result.loss,
                    "acc_i2t": result.acc_i2t,
                    "acc_t2i": result.acc_t2i,
                    "lr": lr,
                    "logit_scale": float(self.model.logit_scale.detach().exp()),
                    "grad_norm": result.grad_norm,
                    "samples_per_s": window_samples / max(elapsed, 1e-9),
                    "data_wait_s": data_wait,
                    "corrupt": int(corrupt),
                    "elapsed_s": round(state.elapsed_s, 2),
                }
                if info.is_main:
                    _write_metrics(self.metrics_path, record)
                    progress.log(record, total)
                window_start, window_samples, data_wait = time.perf_counter(), 0, 0.0
            every = config.validation.every
            if config.validation.data is not None and (
                (every and state.stage_step % every == 0) or last
            ):
                metrics = self._validate(stage)
            if config.save_every and state.stage_step % config.save_every == 0 and not last:
                self._save("last.pt", spec.state, optimizer, scaler)
        progress.close()
        return metrics

    def _validate(self, stage: StageSection) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if self.info.is_main and self.validation is not None:
            start = time.perf_counter()
            metrics = validate(
                self.model, self.tokenizer, self.validation, self.config.validation.batch_size
            )
            self._apply_lock(stage)
            record = {"kind": "val", "step": self.state.global_step, "stage": stage.name}
            record.update({k: round(v, 4) for k, v in metrics.items()})
            record["seconds"] = round(time.perf_counter() - start, 2)
            _write_metrics(self.metrics_path, record)
            log.info(
                "validation at step %d: %s",
                self.state.global_step,
                ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()),
            )
            if metrics["score"] > self.state.best_score:
                self.state.best_score = float(metrics["score"])
                self.state.best_step = self.state.global_step
                self._pending_best = True
        barrier()
        if self._pending_best:
            self._pending_best = False
            self._save_model_only("best.pt")
        return metrics

    # -------------------------------------------------------------- saving
    def _save(
        self,
        name: str,
        loader_state: LoaderState,
        optimizer: torch.optim.Optimizer | None,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        ranks = _gather_rank_states(
            self.info, {"rng": _rng_snapshot(), "loader": loader_state.to_dict()}
        )
        if not self.info.is_main:
            barrier()
            return
        self.state.optimizer = optimizer.state_dict() if optimizer is not None else None
        self.state.scaler = scaler.state_dict() if scaler is not None else None
        self.state.ranks = ranks
        save_checkpoint(
            self.model,
            self.ckpt_dir / name,
            step=self.state.global_step,
            extra={"train_state": self.state.to_dict(), "run_config": self.config.to_dict()},
        )
        self.state.optimizer = self.state.scaler = None
        self.state.ranks = []
        barrier()

    def _save_model_only(self, name: str) -> None:
        if self.info.is_main:
            save_checkpoint(
                self.model,
                self.ckpt_dir / name,
                step=self.state.global_step,
                extra={"best_score": self.state.best_score, "run_config": self.config.to_dict()},
            )

    def _copy_checkpoint(self, source: str, target: str) -> None:
        with atomic_path(self.ckpt_dir / target) as tmp:
            shutil.copyfile(self.ckpt_dir / source, tmp)


def _next_batch(batches: Iterator[Batch]) -> Batch:
    """The next batch; a data error raised in a worker keeps its one-line message."""
    try:
        return next(batches)
    except DataError as exc:
        message = str(exc).strip()
        if "Original Traceback" in message:  # re-raised by the DataLoader
            message = message.splitlines()[-1].split(": ", 1)[-1]
        raise DataError(message) from None


class _Progress:
    """A tqdm bar on a terminal; plain log lines with rate and ETA otherwise."""

    def __init__(self, name: str, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()
        self.done0 = done
        self.bar: Any = None
        self._redirect: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"stage {name}", unit="step")
            self._redirect = logging_redirect_tqdm()  # log lines print above the bar
            self._redirect.__enter__()

    def update(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def log(self, record: dict[str, Any], total: int) -> None:
        if self.bar is not None or not self.enabled:
            return
        done = record["stage_step"]
        rate = (done - self.done0) / max(time.perf_counter() - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else math.inf
        log.info(
            "stage %s step %d/%d loss %.4f lr %.3g %.1f samples/s eta %s",
            record["stage"],
            done,
            total,
            record["loss"],
            record["lr"],
            record["samples_per_s"],
            "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta)),
        )

    def close(self) -> None:
        if self.bar is not None:
            self._redirect.__exit__(None, None, None)
            self.bar.close()


def train(config: RunConfig) -> dict[str, Any]:
    """Run (or resume) the training a config describes; returns the final validation metrics."""
    trainer = Trainer(config)
    try:
        trainer.setup()
        return trainer.fit()
    finally:
        shutdown_distributed()
