"""Training throughput: images/s per backbone and precision, and the two ways to feed augmented data.

Three markdown tables on fabricated uint8 images (nothing is downloaded):

1. **train step**: one full step of :mod:`pipeline.training` (device-side augmentation into 2
   views, forward of encoder + heads, loss, backward, AdamW) for each backbone at its input size
   (small_cnn at 1x8x8 with the digits recipe and at 3x32x32, resnet18 and vit at 3x32x32 with the
   cifar recipe), each precision (fp32; bf16 autocast on CUDA) and, with ``--compile``, eager and
   ``torch.compile``. images/s counts augmented views (batch x 2), as the training history does;
   "aug %" is the share of the step spent in augmentation (timed separately on the same batch).
2. **data path**: the cifar recipe on a batch, device-side and batched
   (:class:`pipeline.augment.BatchAugment` on uint8 data resident on the device) against the usual
   torchvision pipeline (per-sample PIL RandomResizedCrop, flip, ColorJitter, Grayscale, ToTensor,
   Normalize in DataLoader workers, then copied to the device), on the same 32x32 images.
3. **loss** (with ``--loss-batches``): the spread loss (SupCon + cNCE, V = 2, d = 128) forward +
   backward for each precision of its input and, with ``--compile``, compiled. The loss itself
   always computes in float32 (:mod:`pipeline.losses`); bf16 here is the embeddings' dtype.
4. **paper recipe** (with ``--paper-epochs N``): N epochs of :func:`pipeline.training.train` with
   the reference recipe (METHOD.md section 4: ViT, cifar augmentation, AdamW lr 3e-4, weight decay
   0.01, batch 128 x 2 views; loss ce + supcon/2 + cnce/2 as ``supcon_cnce`` in params.yaml) on
   fabricated CIFAR-sized data (``--paper-images`` 3x32x32 images, 45,000 = CIFAR-10's training
   split here), with the time 600 epochs would take at that speed.

Timings are the median over timed repeats after warm-up (compilation happens in the warm-up and
is reported separately). On a shared CPU, absolute numbers are pessimistic.

    .venv/bin/python benchmarks/train_speed.py                       # defaults: batch 256, CUDA if present
    .venv/bin/python benchmarks/train_speed.py --batch 64 --min-time 1   # a quick CPU run
    .venv/bin/python benchmarks/train_speed.py --compile --loss-batches 1024 4096   # on a GPU
    .venv/bin/python benchmarks/train_speed.py --skip-train --skip-data --paper-epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without install

from pipeline.augment import BatchAugment, channel_stats  # noqa: E402
from pipeline.config import LossWeights, TrainParams  # noqa: E402
from pipeline.losses import contrastive_losses  # noqa: E402
from pipeline.models import build_encoder  # noqa: E402
from pipeline.training import Learner, loss_terms  # noqa: E402

N_CLASSES = 10
VIEWS = 2
# (backbone, channels, size, augmentation recipe)
CONFIGS = {
    "small_cnn@8": ("small_cnn", 1, 8, "digits"),
    "small_cnn@32": ("small_cnn", 3, 32, "cifar"),
    "resnet18@32": ("resnet18", 3, 32, "cifar"),
    "vit@32": ("vit", 3, 32, "cifar"),
}
METHODS = {
    "supcon": LossWeights(ce=1.0, supcon=1.0, cnce=0.0, simclr=0.0, recon=0.0),
    "spread": LossWeights(ce=1.0, supcon=0.5, cnce=0.5, simclr=0.0, recon=0.0),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], None], device: torch.device, warmup: int, min_time: float,
            min_repeats: int) -> tuple[float, float]:
    """(median seconds per call, seconds spent in warm-up) of ``fn``, synchronising the device."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    warm = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < min_repeats or sum(times) < min_time:
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), warm


def fabricate(n: int, channels: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, C, H, W) with smooth random content, and labels (n,)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, max(2, size // 4), max(2, size // 4), generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.randn(x.shape, generator=gen)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), torch.randint(0, N_CLASSES, (n,), generator=gen)


# --------------------------------------------------------------------------- 1. train step


def train_step_row(name: str, batch: int, precision: str, compiled: bool, method: str,
                   device: torch.device, args: argparse.Namespace) -> str:
    backbone, channels, size, recipe = CONFIGS[name]
    torch.manual_seed(0)
    images, labels = fabricate(4 * batch, channels, size)
    images, labels = images.to(device), labels.to(device)
    mean, std = channel_stats(images)
    augment = BatchAugment(recipe, channels, size, mean, std).to(device)
    weights = METHODS[method]
    learner = Learner(build_encoder(backbone, channels, size), N_CLASSES, weights, (channels, size, size)).to(device)
    if device.type == "cuda":
        learner = learner.to(memory_format=torch.channels_last)
    model = torch.compile(learner) if compiled else learner
    optimizer = torch.optim.AdamW(learner.parameters(), lr=1e-3, weight_decay=0.01)
    opts = TrainParams(precision=precision)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    gen = torch.Generator().manual_seed(1)

    def batch_idx() -> torch.Tensor:
        return torch.randint(0, len(images), (batch,), generator=gen).to(device)

    def step() -> None:
        idx = batch_idx()
        views = augment.views(images[idx], VIEWS)
        with autocast:
            terms = loss_terms(model, views, labels[idx], weights, opts)
        total = sum(weights.active()[t] * terms[t] for t in terms)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    def aug_only() -> None:
        augment.views(images[batch_idx()], VIEWS)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, warm = time_it(step, device, args.warmup + (2 if compiled else 0), args.min_time, args.min_repeats)
    aug_seconds, _ = time_it(aug_only, device, 1, args.min_time / 4, args.min_repeats)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "-"
    n_params = sum(p.numel() for p in learner.encoder.parameters()) / 1e6
    return (f"| {backbone} | {channels}x{size}x{size} | {n_params:.2f} | {batch} x {VIEWS} | {precision} | "
            f"{'yes' if compiled else 'no'} | {seconds * 1e3:.1f} | {batch * VIEWS / seconds:,.0f} | "
            f"{100 * min(1.0, aug_seconds / seconds):.0f} | {peak} | {warm:.1f} |")


# --------------------------------------------------------------------------- 2. data path


class _PILViews(torch.utils.data.Dataset):
    """uint8 HWC images; each item is ``VIEWS`` torchvision-augmented tensors and the label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return torch.stack([self.transform(img) for _ in range(VIEWS)]), int(self.labels[i])


def torchvision_cifar(mean: torch.Tensor, std: torch.Tensor) -> Callable:
    """The reference recipe (METHOD.md section 4) as the usual per-sample torchvision pipeline."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(32, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
        T.Normalize(mean.tolist(), std.tolist()),
    ])


def data_path_rows(batch: int, device: torch.device, args: argparse.Namespace) -> list[str]:
    images, labels = fabricate(max(8 * batch, 2048), 3, 32, seed=2)
    mean, std = channel_stats(images)

    resident = images.to(device)
    augment = BatchAugment("cifar", 3, 32, mean, std).to(device)
    gen = torch.Generator().manual_seed(1)
    dev_s, _ = time_it(lambda: augment.views(resident[torch.randint(0, len(resident), (batch,), generator=gen)
                                                       .to(device)], VIEWS),
                       device, args.warmup, args.min_time, args.min_repeats)

    hwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())  # PIL wants (H, W, C)
    dataset = _PILViews(hwc, labels.numpy(), torchvision_cifar(mean, std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    n_batches = max(args.min_repeats, 3)
    it = iter(loader)
    next(it)  # start the workers; not timed
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n_batches or time.perf_counter() - t0 < args.min_time:
        try:
            views, _ = next(it)
        except StopIteration:
            it = iter(loader)
            views, _ = next(it)
        views.to(device, non_blocking=True)
        done += 1
    _sync(device)
    tv_s = (time.perf_counter() - t0) / done
    where = "GPU" if device.type == "cuda" else "CPU"
    return [
        f"| batched, device-side (kornia, uint8 resident on {where}) | {batch} x {VIEWS} | {dev_s * 1e3:.1f} | "
        f"{batch * VIEWS / dev_s:,.0f} | {tv_s / dev_s:.1f}x |",
        f"| per-sample PIL (torchvision, DataLoader, {args.workers} workers) | {batch} x {VIEWS} | {tv_s * 1e3:.1f} | "
        f"{batch * VIEWS / tv_s:,.0f} | 1.0x |",
    ]


# --------------------------------------------------------------------------- 3. loss


def loss_row(batch: int, precision: str, compiled: bool, device: torch.device, args: argparse.Namespace) -> str:
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    z = torch.randn(batch, VIEWS, 128, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, N_CLASSES, (batch,), generator=gen).to(device)

    def spread(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = contrastive_losses(z, y, ("supcon", "cnce"), 0.5)
        return 0.5 * t["supcon"] + 0.5 * t["cnce"]

    fn = torch.compile(spread) if compiled else spread

    def step() -> None:
        z.grad = None
        fn(z, y).backward()

    seconds, warm = time_it(step, device, args.warmup + (2 if compiled else 0), args.min_time, args.min_repeats)
    return f"| {batch} | 128 | {precision} | {'yes' if compiled else 'no'} | {seconds * 1e3:.2f} | {warm:.1f} |"


# --------------------------------------------------------------------------- 4. paper recipe


def paper_recipe_rows(args: argparse.Namespace, precision: str) -> list[str]:
    from pipeline.config import DatasetParams, RecipeParams
    from pipeline.data.records import COARSE_TO_FINE, Records, Split
    from pipeline.training import train

    images, fine = fabricate(args.paper_images, 3, 32, seed=3)
    small, small_fine = fabricate(64, 3, 32, seed=4)

    def split(x: torch.Tensor, y: torch.Tensor) -> Split:
        return Split(x.numpy(), {"coarse": (y.numpy() >= 5).astype(np.int64), "fine": y.numpy()})

    records = Records(name="cifar_sized", task=COARSE_TO_FINE,
                      splits={"train": split(images, fine), "val": split(small, small_fine),
                              "test": split(small, small_fine)},
                      class_names={"coarse": ["0-4", "5-9"], "fine": [str(i) for i in range(10)]})
    recipe = RecipeParams(backbone="vit", augment="cifar", epochs=args.paper_epochs, batch_size=args.paper_batch,
                          lr=3e-4, weight_decay=0.01, warmup_epochs=0, views=VIEWS, decoder_width=64)
    opts = TrainParams(device=args.device, precision=precision, compile=args.compile or args.compile_only)
    rows: list[str] = []

    def on_epoch(rec: dict) -> None:
        rows.append(f"| {int(rec['epoch'])} | {precision} | {'yes' if opts.compile else 'no'} | "
                    f"{rec['loss/total']:.4f} | {rec['seconds']:.1f} | {rec['images_per_s']:,.0f} | "
                    f"{rec['seconds'] * 600 * 45_000 / args.paper_images / 3600:.1f} |")
        print(rows[-1], flush=True)

    torch.manual_seed(0)
    train(records, DatasetParams(source="cifar10", recipe=recipe), METHODS["spread"], opts, seed=0,
          on_epoch=on_epoch, progress=False)
    return rows


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256,
                        help="images per step (x 2 views); 256 is the target, use less on a CPU")
    parser.add_argument("--backbones", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32, plus bf16 on CUDA")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (eager rows stay)")
    parser.add_argument("--compile-only", action="store_true", help="time torch.compile rows only")
    parser.add_argument("--method", choices=list(METHODS), default="supcon",
                        help="loss of the train step: supcon = ce + supcon, spread = ce + supcon/2 + cnce/2")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, CPUs))")
    parser.add_argument("--loss-batches", type=int, nargs="*", default=[],
                        help="also time the spread loss alone at these batch sizes")
    parser.add_argument("--paper-epochs", type=int, default=0, help="epochs of the paper recipe (0: skip)")
    parser.add_argument("--paper-images", type=int, default=45_000, help="fabricated 3x32x32 training images")
    parser.add_argument("--paper-batch", type=int, default=128, help="paper recipe batch (reference: 128)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-data", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=2.0, help="timed seconds per row (at least)")
    parser.add_argument("--min-repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workers is None:
        args.workers = min(8, len(os.sched_getaffinity(0)))
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    modes = [True] if args.compile_only else ([False, True] if args.compile else [False])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        where = f"{torch.cuda.get_device_name(device)}"
    else:
        where = f"cpu, {torch.get_num_threads()} threads"
    header = f"device: {where}; torch {torch.__version__}; precisions {', '.join(precisions)}; " \
             f"compile {'/'.join('on' if m else 'off' for m in modes)}"
    if not (args.skip_train and args.skip_data):
        header += f"; batch {args.batch} images x {VIEWS} views; train-step loss: {args.method}"
    print(header + "\n", flush=True)

    if not args.skip_train:
        print("| backbone | input | encoder M params | batch | precision | compiled | ms / step | images/s "
              "| aug % | peak GiB | warm-up s |")
        print("|---|---|---:|---|---|---|---:|---:|---:|---:|---:|")
        for name in args.backbones:
            for precision in precisions:
                for compiled in modes:
                    print(train_step_row(name, args.batch, precision, compiled, args.method, device, args),
                          flush=True)
        print()

    if not args.skip_data:
        print("| data path (cifar recipe, 3x32x32) | batch | ms / batch | images/s | speed-up |")
        print("|---|---|---:|---:|---:|")
        for row in data_path_rows(args.batch, device, args):
            print(row, flush=True)
        print()

    if args.loss_batches:
        print("| loss B | d | z dtype | compiled | ms fwd+bwd | warm-up s |")
        print("|---:|---:|---|---|---:|---:|")
        for batch in args.loss_batches:
            for precision in precisions:
                for compiled in modes:
                    print(loss_row(batch, precision, compiled, device, args), flush=True)
        print()
    if args.paper_epochs:
        print(f"paper recipe: ViT, cifar augmentation, AdamW 3e-4 / wd 0.01, batch {args.paper_batch} x {VIEWS}, "
              f"{args.paper_images:,} fabricated 3x32x32 images; loss ce + supcon/2 + cnce/2\n")
        print("| epoch | precision | compiled | loss | seconds | images/s | h for 600 epochs of 45k |")
        print("|---:|---|---|---:|---:|---:|---:|", flush=True)
        for precision in precisions:
            paper_recipe_rows(args, precision)
        print()
    print("ms: median of the timed repeats after warm-up (compilation is in the warm-up); images/s count "
          "augmented views; aug %: augmentation alone over the whole step.")


if __name__ == "__main__":
    main()
