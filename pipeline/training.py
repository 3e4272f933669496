"""Train one method on one dataset with one seed: the encoder, its heads, and the loss mix.

The whole training split sits on the device as uint8; each step draws a batch,
augments it there into V views, embeds all views in one pass and combines the
loss terms of METHOD.md sections 2-3 with the method's weights:

    total = ce * CE(head(z), y) + supcon * SupCon(z, y) + cnce * cNCE(z, y)
          + simclr * SimCLR(z) + recon * MSE(decoder(z), view)

Training is resumable (a checkpoint every ``checkpoint_every`` epochs holds the
model, optimiser, schedule and RNG state), deterministic on CPU for a seed, and
stops at the first non-finite loss, naming the epoch, step and term.

Multi-process (DistributedDataParallel), when a process group is initialised (the
train stage under ``torchrun``, see :func:`pipeline.distributed.process_group`):

* every rank draws the same global batch order and augments the whole global batch
  of ``batch_size`` images from the same random stream, then keeps its contiguous
  slice of about ``batch_size / world`` images. The views are therefore exactly
  those of one process, and the shared stream needs one saved RNG state to resume.
  (Augmenting B instead of B / world images costs little: batched augmentation is
  cheap next to the model, and on a GPU it is bound by kernel launches, not size.)
* the contrastive terms gather the candidates of every rank (``gather=True``), the
  per-row mean terms (ce, recon) are weighted by the ranks' shares
  (:func:`pipeline.distributed.mean_over_ranks`): with DDP's gradient average the
  update is that of one process holding the whole batch, and every rank computes,
  logs and NaN-checks the whole-batch loss value;
* BatchNorm normalises with per-rank batch statistics (``batch_size / world``
  images), not synchronised; running statistics are rank 0's (DDP broadcasts
  buffers from rank 0 before every forward). Backbones with BatchNorm (small_cnn,
  the ResNets, the decoder) therefore train slightly differently from one process;
* randomness inside the model (ViT dropout, drop-path) draws from a per-rank,
  per-step seed, so ranks do not repeat each other's masks (the masks differ from
  a one-process run's, but are as random and as reproducible);
* only rank 0 shows progress and writes resume checkpoints; every rank reads one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import distributed
from pipeline.augment import BatchAugment, channel_stats
from pipeline.config import DatasetParams, LossWeights, RecipeParams, TrainParams
from pipeline.data.records import Records
from pipeline.devices import select_device
from pipeline.errors import StageError
from pipeline.formats import MODEL_FORMAT, RESUME_FORMAT
from pipeline.losses import TERMS as CONTRASTIVE_TERMS
from pipeline.losses import contrastive_losses
from pipeline.models import build_decoder, build_encoder
from pipeline.models.pretrained import PretrainedWeights, apply_pretrained



class NonFiniteLossError(StageError):
    """A loss term became NaN or inf; the message names the epoch, step and term."""


class Learner(nn.Module):
    """Encoder plus the heads its loss needs: a linear classifier (ce) and a decoder (recon)."""

    def __init__(self, encoder: nn.Module, n_classes: int, weights: LossWeights,
                 image_shape: tuple[int, int, int], decoder_width: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        d = encoder.embed_dim
        self.head = nn.Linear(d, n_classes) if weights.ce > 0 else None
        c, h, _ = image_shape
        self.decoder = build_decoder(d, c, h, decoder_width) if weights.recon > 0 else None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """images (N, C, H, W) -> embeddings (N, d), class logits (N, K) or None, reconstructions
        (N, C, H, W) or None.

        Every parameter is used here, in ``forward``: DistributedDataParallel and torch.compile
        only see what runs through the wrapped module's forward.
        """
        z = self.encoder(images)
        logits = self.head(z) if self.head is not None else None
        recon = self.decoder(z) if self.decoder is not None else None
        return z, logits, recon


def loss_terms(model: nn.Module, views: Tensor, labels: Tensor, weights: LossWeights,
               opts: TrainParams) -> dict[str, Tensor]:
    """The active loss terms for one batch of views (B, V, C, H, W) with labels (B,).

    ``model`` is a :class:`Learner`, possibly wrapped (DDP, torch.compile). In a process group
    the batch is this rank's share and every returned term is the whole global batch's value.
    """
    b, v = views.shape[:2]
    flat = views.flatten(0, 1)  # (B*V, C, H, W), image-major: rows i*V .. i*V+V-1 are image i
    z, logits, recon = model(flat)  # z: (B*V, d)
    active = weights.active()
    terms: dict[str, Tensor] = {}
    if "ce" in active:
        terms["ce"] = F.cross_entropy(logits.float(), labels.repeat_interleave(v))
    wanted = [t for t in CONTRASTIVE_TERMS if t in active]
    if wanted:
        terms.update(contrastive_losses(
            z.view(b, v, -1), labels, wanted, opts.temperature, pos_in_denom=opts.pos_in_denom,
            symmetric=opts.symmetric, reference_compat=opts.reference_compat,
            gather=distributed.is_distributed(),
        ))
    if "recon" in active:
        terms["recon"] = F.mse_loss(recon.float(), flat.float())
    row_means = [t for t in ("ce", "recon") if t in terms]
    if row_means and distributed.is_distributed():
        # Means over this rank's rows -> whole-batch means (one all-reduce for both terms).
        merged = distributed.mean_over_ranks(torch.stack([terms[t] for t in row_means]), b)
        terms.update(zip(row_means, merged.unbind()))
    return terms


@contextmanager
def _rank_rng(seed: int, rank: int, step: int, device: torch.device) -> Iterator[None]:
    """A per-rank random stream for one step, leaving the shared stream where it was.

    The ranks share one random stream (same seed) so that they augment identically; the model's
    own randomness (dropout, drop-path) must differ between ranks, or rank r's rows would get
    exactly rank 0's masks.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        step_seed = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)
        torch.default_generator.manual_seed(step_seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(step_seed)
        yield


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# (one hash of the code that trains, its per-file hashes): see pipeline.provenance.code_fingerprint
CodeVersion = tuple[str, dict[str, str]]
# Per-epoch fields that measure the machine, not the run: logged (MLflow, logs/), never in the
# history that is a DVC output, so that a byte-identical retrain changes no output.
TIMING_KEYS = ("seconds", "images_per_s")
# A run whose last epoch's mean loss is not at least this much (relative) below its first epoch's
# did not learn: a healthy run's first epoch holds the loss at initialisation and falls well below it.
STALL_RTOL = 1e-3


def stalled_loss(history: list[dict[str, float]], rtol: float = STALL_RTOL) -> str | None:
    """Why the run's optimised objective (``loss/total``) did not fall, or None if it did.

    Per-term values are not judged: a mix of conflicting terms (SupCon against cNCE) may let one
    rise while the total falls. Needs two epochs or more.
    """
    if len(history) < 2:
        return None
    first, last = history[0]["loss/total"], history[-1]["loss/total"]
    if last < first - rtol * abs(first):
        return None
    return (f"the total loss did not fall over {len(history)} epochs (epoch 1: {first:.6g}, epoch "
            f"{len(history)}: {last:.6g})")


def fingerprint(*parts: Any) -> str:
    """A stable hash of the settings a run depends on (a resume state must match it)."""
    blob = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrainOutcome:
    """A trained encoder's saveable state and its per-epoch history."""

    model: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    from pipeline.io import atomic_write

    atomic_write(path, lambda f: torch.save(state, f))


def _load_resume(path: Path, expected: str, code: CodeVersion | None) -> dict[str, Any] | None:
    """The resume state at ``path`` if it belongs to this exact run (same settings and, when
    ``code`` is given, the same code), else None with one line saying why it is discarded."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: start over, say why
        tqdm.write(f"ignoring unreadable resume state {path}: {err}")
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or state.get("fingerprint") != expected:
        tqdm.write(f"ignoring resume state {path}: it belongs to other settings")
        return None
    if code is not None:
        saved = state.get("code") if isinstance(state.get("code"), dict) else {}
        if saved.get("fingerprint") != code[0]:
            old_files = saved.get("files") if isinstance(saved.get("files"), dict) else {}
            changed = sorted(f for f in {*old_files, *code[1]} if old_files.get(f) != code[1].get(f))
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            tqdm.write(f"ignoring resume state {path}: it was written by other code (changed since: "
                       f"{shown or 'unknown, the checkpoint predates code fingerprints'}); training from epoch 0 "
                       "so that no model mixes epochs of two code versions")
            return None
    return state


@dataclass
class _Session:
    """Everything one training run holds, built by :func:`_setup` (in a fixed order: the random
    stream it consumes decides the initial weights)."""

    device: torch.device
    world: int
    rank: int
    images: Tensor               # (N, C, H, W) uint8, resident on the device
    labels: Tensor               # (N,) training labels
    mean: Tensor                 # (C,) channel statistics of the training images, [0, 1] scale
    std: Tensor
    augment: BatchAugment
    learner: Learner
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batch: int                   # global batch, images
    steps_per_epoch: int
    rows: slice                  # this rank's rows of every global batch
    key: str                     # fingerprint of the settings (the resume state must match it)


def _setup(records: Records, dataset: DatasetParams, weights: LossWeights, opts: TrainParams,
           seed: int, init: PretrainedWeights | None = None) -> _Session:
    """Device, resident data, augmentation, model (from ``init`` if given), optimiser and schedule
    of one run."""
    recipe = dataset.recipe
    device = select_device(opts.device)
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK)
    if opts.cpu_threads:
        torch.set_num_threads(opts.cpu_threads)
    torch.manual_seed(seed)

    split = records.splits["train"]
    images = torch.from_numpy(np.array(split.images)).to(device)  # (N, C, H, W) uint8, resident
    labels = torch.from_numpy(np.array(split.labels[records.train_label])).to(device)
    n_classes = len(records.class_names.get(records.train_label, [])) or int(labels.max()) + 1
    c, h, _ = records.image_shape

    encoder = build_encoder(recipe.backbone, c, h)
    if init is None:
        mean, std = channel_stats(images)
    else:  # the weights' own input statistics: the features they learnt expect that input
        apply_pretrained(encoder, init)
        mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (init.mean, init.std))
    augment = BatchAugment(recipe.augment, c, h, mean, std).to(device)
    learner = Learner(encoder, n_classes, weights, records.image_shape, recipe.decoder_width).to(device)
    if device.type == "cuda":
        learner = learner.to(memory_format=torch.channels_last)

    batch = min(recipe.batch_size, len(images))
    steps_per_epoch = len(images) // batch  # drop the ragged last batch: contrastive terms want full batches
    if batch < world:
        raise ValueError(f"datasets.{records.name}.recipe.batch_size: the global batch ({batch} images) "
                         f"must be at least the number of processes ({world})")
    total_steps = recipe.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(learner.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = recipe.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, total_steps, warmup))
    # One process keeps its historical fingerprint; a multi-process run is another run (BatchNorm
    # statistics per rank), so its resume state is not mixed up with a one-process one.
    key = fingerprint(dataset, weights, opts, seed, records.name, *([{"world_size": world}] if world > 1 else []))
    # This rank's rows of every global batch: contiguous, sizes differing by at most one.
    rows = slice(batch * rank // world, batch * (rank + 1) // world)
    return _Session(device, world, rank, images, labels, mean, std, augment, learner, optimizer, scheduler,
                    batch, steps_per_epoch, rows, key)


def _restore(run: _Session, state: dict[str, Any]) -> tuple[list[dict[str, float]], int]:
    """Load a resume state into the run: (the history so far, the epoch to start at)."""
    run.learner.load_state_dict(state["learner"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if run.device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"])
    return list(state["history"]), int(state["epoch"])


def _checkpoint(run: _Session, path: Path, epoch: int, history: list[dict[str, float]],
                code: CodeVersion | None) -> None:
    """Write the resume state after ``epoch`` epochs (rank 0's resumes every rank: weights and
    optimiser state are replicated by DDP, and the shared random stream is the same on every rank)."""
    state = {
        "format": RESUME_FORMAT, "fingerprint": run.key, "epoch": epoch, "history": history,
        "code": {"fingerprint": code[0], "files": code[1]} if code is not None else None,
        "learner": run.learner.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
    }
    if run.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state()
    _save_resume(path, state)


def _epoch(run: _Session, model: nn.Module, epoch: int, recipe: RecipeParams, weights: LossWeights,
           opts: TrainParams, seed: int) -> dict[str, float]:
    """One epoch of optimiser steps; its record: mean loss per term, epoch, lr and the timings."""
    run.learner.train()
    active = weights.active()
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16")
    # The batch order of an epoch depends only on (seed, epoch), so a resumed run replays it.
    order_gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(run.images), generator=order_gen).to(run.device)
    sums = {t: 0.0 for t in [*active, "total"]}
    t0 = time.perf_counter()
    for step in range(run.steps_per_epoch):
        idx = order[step * run.batch:(step + 1) * run.batch]
        views, y = run.augment.views(run.images[idx], recipe.views), run.labels[idx]
        model_rng = nullcontext()
        if run.world > 1:
            views, y = views[run.rows], y[run.rows]
            model_rng = _rank_rng(seed, run.rank, epoch * run.steps_per_epoch + step, run.device)
        with autocast, model_rng:
            terms = loss_terms(model, views, y, weights, opts)
        total = sum(active[t] * terms[t] for t in active)
        if not torch.isfinite(total):
            bad = {t: float(v.detach()) for t, v in terms.items() if not torch.isfinite(v)}
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {step + 1}: terms {bad} "
                f"(total {float(total.detach())}); training stopped, no model written")
        run.optimizer.zero_grad(set_to_none=True)
        total.backward()
        run.optimizer.step()
        run.scheduler.step()
        for t in active:
            sums[t] += float(terms[t].detach())
        sums["total"] += float(total.detach())
    seconds = time.perf_counter() - t0
    record = {f"loss/{t}": s / run.steps_per_epoch for t, s in sums.items()}
    record.update(epoch=epoch + 1, lr=run.optimizer.param_groups[0]["lr"])
    # images/s of the whole job (all ranks): every rank times the same global batches.
    record.update(seconds=seconds, images_per_s=run.steps_per_epoch * run.batch * recipe.views / seconds)
    return record


def _export(run: _Session, records: Records, backbone: str) -> dict[str, Any]:
    """The model file's content: the frozen encoder (on the CPU), its input statistics, metadata."""
    encoder_state = {k: v.detach().cpu().contiguous() for k, v in run.learner.encoder.state_dict().items()}
    return {
        "format": MODEL_FORMAT,
        "backbone": backbone,
        "image_shape": list(records.image_shape),
        "embed_dim": int(run.learner.encoder.embed_dim),
        "mean": run.mean.cpu(),
        "std": run.std.cpu(),
        "encoder": encoder_state,
        "fingerprint": run.key,
    }


def train(
    records: Records,
    dataset: DatasetParams,
    weights: LossWeights,
    opts: TrainParams,
    seed: int,
    *,
    resume_path: Path | None = None,
    code: CodeVersion | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    init: PretrainedWeights | None = None,
) -> TrainOutcome:
    """Train an encoder on ``records``' training split with the loss ``weights``.

    ``init``: pretrained weights to start from (:mod:`pipeline.models.pretrained`), with their
    input normalisation; otherwise a random initialisation and the training images' statistics.
    Every weight 0 (nothing to optimise) trains nothing: the initial encoder is exported, frozen,
    with an empty history (the untrained baseline).

    ``resume_path``: where resume checkpoints go; one written with the same settings (and the
    same ``code``, see :func:`pipeline.provenance.code_fingerprint`) is resumed. ``on_epoch``
    gets each epoch's record: losses, lr and the timings of :data:`TIMING_KEYS`; the returned
    history holds the same records without the timings.
    """
    recipe = dataset.recipe
    run = _setup(records, dataset, weights, opts, seed, init)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume_path is not None and (state := _load_resume(resume_path, run.key, code)) is not None:
        history, start_epoch = _restore(run, state)
        if run.rank == 0:
            tqdm.write(f"resuming from {resume_path} at epoch {start_epoch}")

    # Wrap after loading any resume state: DDP broadcasts rank 0's weights when it is built.
    model: nn.Module = run.learner
    if run.world > 1:
        model = DistributedDataParallel(run.learner, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if opts.compile:
        model = torch.compile(model)  # type: ignore[assignment]

    epochs = recipe.epochs if weights.active() else 0
    bar = tqdm(range(start_epoch, epochs), initial=start_epoch, total=epochs,
               desc=f"{records.name} seed {seed}", disable=not progress or run.rank != 0, leave=False)
    for epoch in bar:
        record = _epoch(run, model, epoch, recipe, weights, opts, seed)
        history.append({k: v for k, v in record.items() if k not in TIMING_KEYS})
        bar.set_postfix(loss=f"{record['loss/total']:.3f}", img_s=f"{record['images_per_s']:.0f}")
        if on_epoch is not None:
            on_epoch(record)
        done = epoch + 1
        if resume_path is not None and run.rank == 0 and done % opts.checkpoint_every == 0 and done < epochs:
            _checkpoint(run, resume_path, done, history, code)
    return TrainOutcome(model=_export(run, records, recipe.backbone), history=history)
