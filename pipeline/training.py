"""Train one method on one dataset with one seed: the encoder, its heads, and the loss mix.

The whole training split sits on the device as uint8; each step draws a batch,
augments it there into V views, embeds all views in one pass and combines the
loss terms of METHOD.md sections 2-3 with the method's weights:

    total = ce * CE(head(z), y) + supcon * SupCon(z, y) + cnce * cNCE(z, y)
          + simclr * SimCLR(z) + recon * MSE(decoder(z), view)

Training is resumable (a checkpoint every ``checkpoint_every`` epochs holds the
model, optimiser, schedule and RNG state), deterministic on CPU for a seed, and
stops at the first non-finite loss, naming the epoch, step and term.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.augment import BatchAugment, channel_stats
from pipeline.config import CONTRASTIVE_TERMS, DatasetParams, LossWeights, TrainParams
from pipeline.data.records import Records
from pipeline.losses import contrastive_losses
from pipeline.models import build_decoder, build_encoder

MODEL_FORMAT = "thanos-bench/encoder/v1"
RESUME_FORMAT = "thanos-bench/resume/v1"


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; the message names the epoch, step and term."""


def select_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


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


def loss_terms(learner: Learner, views: Tensor, labels: Tensor, weights: LossWeights,
               opts: TrainParams) -> dict[str, Tensor]:
    """The active loss terms for one batch of views (B, V, C, H, W) with labels (B,)."""
    b, v = views.shape[:2]
    flat = views.flatten(0, 1)  # (B*V, C, H, W), image-major: rows i*V .. i*V+V-1 are image i
    z = learner.encoder(flat)  # (B*V, d)
    active = weights.active()
    terms: dict[str, Tensor] = {}
    if "ce" in active:
        terms["ce"] = F.cross_entropy(learner.head(z).float(), labels.repeat_interleave(v))
    wanted = [t for t in CONTRASTIVE_TERMS if t in active]
    if wanted:
        terms.update(contrastive_losses(
            z.view(b, v, -1), labels, wanted, opts.temperature, pos_in_denom=opts.pos_in_denom,
            symmetric=opts.symmetric, reference_compat=opts.reference_compat,
        ))
    if "recon" in active:
        terms["recon"] = F.mse_loss(learner.decoder(z).float(), flat.float())
    return terms


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


def _load_resume(path: Path, expected: str) -> dict[str, Any] | None:
    """The resume state at ``path`` if it belongs to this exact run, else None."""
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
    return state


def train(
    records: Records,
    dataset: DatasetParams,
    weights: LossWeights,
    opts: TrainParams,
    seed: int,
    *,
    resume_path: Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train an encoder on ``records``' training split with the loss ``weights``."""
    recipe = dataset.recipe
    device = select_device(opts.device)
    if opts.cpu_threads:
        torch.set_num_threads(opts.cpu_threads)
    torch.manual_seed(seed)

    split = records.splits["train"]
    images = torch.from_numpy(np.array(split.images)).to(device)  # (N, C, H, W) uint8, resident
    labels = torch.from_numpy(np.array(split.labels[records.train_label])).to(device)
    n_classes = len(records.class_names.get(records.train_label, [])) or int(labels.max()) + 1
    c, h, _ = records.image_shape

    mean, std = channel_stats(images)
    augment = BatchAugment(recipe.augment, c, h, mean, std).to(device)
    learner = Learner(build_encoder(recipe.backbone, c, h), n_classes, weights, records.image_shape,
                      recipe.decoder_width).to(device)
    if device.type == "cuda":
        learner = learner.to(memory_format=torch.channels_last)
    forward_learner = learner
    if opts.compile:
        forward_learner = torch.compile(learner)  # type: ignore[assignment]

    batch = min(recipe.batch_size, len(images))
    steps_per_epoch = len(images) // batch  # drop the ragged last batch: contrastive terms want full batches
    total_steps = recipe.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(learner.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = recipe.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, total_steps, warmup))

    key = fingerprint(dataset, weights, opts, seed, records.name)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume_path is not None and (state := _load_resume(resume_path, key)) is not None:
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        tqdm.write(f"resuming from {resume_path} at epoch {start_epoch}")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16")
    active = weights.active()
    bar = tqdm(range(start_epoch, recipe.epochs), initial=start_epoch, total=recipe.epochs,
               desc=f"{records.name} seed {seed}", disable=not progress, leave=False)
    for epoch in bar:
        learner.train()
        # The batch order of an epoch depends only on (seed, epoch), so a resumed run replays it.
        order_gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(images), generator=order_gen).to(device)
        sums = {t: 0.0 for t in [*active, "total"]}
        t0 = time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            views = augment.views(images[idx], recipe.views)
            with autocast:
                terms = loss_terms(forward_learner, views, labels[idx], weights, opts)
            total = sum(active[t] * terms[t] for t in active)
            if not torch.isfinite(total):
                bad = {t: float(v.detach()) for t, v in terms.items() if not torch.isfinite(v)}
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1}: terms {bad} "
                    f"(total {float(total.detach())}); training stopped, no model written")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            for t in active:
                sums[t] += float(terms[t].detach())
            sums["total"] += float(total.detach())
        seconds = time.perf_counter() - t0
        record = {f"loss/{t}": s / steps_per_epoch for t, s in sums.items()}
        record.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"], seconds=seconds,
                      images_per_s=steps_per_epoch * batch * recipe.views / seconds)
        history.append(record)
        bar.set_postfix(loss=f"{record['loss/total']:.3f}", img_s=f"{record['images_per_s']:.0f}")
        if on_epoch is not None:
            on_epoch(record)
        done = epoch + 1
        if resume_path is not None and done % opts.checkpoint_every == 0 and done < recipe.epochs:
            state = {
                "format": RESUME_FORMAT, "fingerprint": key, "epoch": done, "history": history,
                "learner": learner.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
            }
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state()
            _save_resume(resume_path, state)

    encoder_state = {k: v.detach().cpu().contiguous() for k, v in learner.encoder.state_dict().items()}
    model = {
        "format": MODEL_FORMAT,
        "backbone": recipe.backbone,
        "image_shape": list(records.image_shape),
        "embed_dim": int(learner.encoder.embed_dim),
        "mean": mean.cpu(),
        "std": std.cpu(),
        "encoder": encoder_state,
        "fingerprint": key,
    }
    return TrainOutcome(model=model, history=history)
