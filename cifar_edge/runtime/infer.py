"""Batch inference over image files: decode in worker processes, classify in batches.

Decoding a 32x32 JPEG is ~90 us of mostly Python-level Pillow work, so it
runs in separate processes (threads would serialise on the GIL) a few
batches ahead of the model; memory stays bounded whatever the folder size.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifar_edge.runtime.classifier import Classifier
from cifar_edge.runtime.images import ImageReadError, load_image
from cifar_edge.runtime.manifest import IMAGE_SIZE

PARALLEL_DECODE_MIN = 512  # below this, starting worker processes costs more than it saves


@dataclass
class Prediction:
    """One file's result: top-k (class, probability), or the reason it failed."""

    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_batch(paths: Sequence[Path]) -> tuple[np.ndarray, dict[int, str]]:
    """Decode files into one (N, 32, 32, 3) uint8 array; failures by index, with the reason."""
    images = np.zeros((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            images[i] = load_image(path)
        except ImageReadError as exc:
            errors[i] = str(exc)
    return images, errors


def _decode_pool(workers: int) -> futures.Executor:
    """Worker processes for decoding (Pillow's per-image work is mostly under the GIL)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)


def predict_files(
    classifier: Classifier,
    files: Sequence[Path],
    batch_size: int = 64,
    top_k: int = 1,
    workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[Prediction]:
    """Yield one Prediction per file, in input order.

    Unreadable files yield a Prediction with `error` set; the rest go on.
    Files decode in `workers` processes (0: in this process; default: one
    per core for PARALLEL_DECODE_MIN files or more, else 0) while the model
    runs here, at most 2 batches per worker ahead, so memory stays bounded.
    `on_batch(n)` is called after each batch with the number of files done.
    """
    top_k = max(1, min(top_k, len(classifier.class_names)))
    names = classifier.class_names
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    if workers is None:
        workers = (os.cpu_count() or 1) if len(files) >= PARALLEL_DECODE_MIN else 0
    pool = _decode_pool(workers) if workers else None
    try:
        pending: deque = deque()
        submitted = 0
        done = 0
        for b, batch in enumerate(batches):
            if pool:
                while submitted < len(batches) and submitted <= b + 2 * workers:
                    pending.append(pool.submit(decode_batch, batches[submitted]))
                    submitted += 1
                images, errors = pending.popleft().result()
            else:
                images, errors = decode_batch(batch)
            good = [i for i in range(len(batch)) if i not in errors]
            probs = classifier.predict(images[good]) if good else None
            row = {i: r for r, i in enumerate(good)}
            for i, path in enumerate(batch):
                if i in errors:
                    yield Prediction(path=path, error=errors[i])
                    continue
                p = probs[row[i]]
                order = np.argsort(-p, kind="stable")[:top_k]
                yield Prediction(path=path, top=[(names[j], float(p[j])) for j in order])
            done += len(batch)
            if on_batch:
                on_batch(done)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
