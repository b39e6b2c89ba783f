"""Batch inference over image files: decode in threads, classify in batches.

Decoding runs in a thread pool (Pillow releases the GIL) one batch ahead of
the model, so memory stays bounded by a couple of batches whatever the
folder size.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifar_edge.runtime.classifier import Classifier
from cifar_edge.runtime.images import ImageReadError, load_image


@dataclass
class Prediction:
    """One file's result: top-k (class, probability), or the reason it failed."""

    path: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _decode(path: Path) -> np.ndarray | str:
    try:
        return load_image(path)
    except ImageReadError as exc:
        return str(exc)


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    `on_batch(n)` is called after each batch with the number of files done.
    """
    top_k = max(1, min(top_k, len(classifier.class_names)))
    workers = workers or min(8, os.cpu_count() or 1)
    names = classifier.class_names
    with futures.ThreadPoolExecutor(max_workers=workers) as pool:
        batches = _batches(files, batch_size)

        def submit(batch: Sequence[Path] | None):
            if batch is None:
                return None
            return batch, [pool.submit(_decode, path) for path in batch]

        # Batch i+1 decodes in the pool while batch i runs through the model.
        pending = submit(next(batches, None))
        done = 0
        while pending is not None:
            batch, jobs = pending
            pending = submit(next(batches, None))
            decoded = [job.result() for job in jobs]
            good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
            probs = classifier.predict(np.stack([decoded[i] for i in good])) if good else None
            row = {i: r for r, i in enumerate(good)}
            for i, path in enumerate(batch):
                if isinstance(decoded[i], str):
                    yield Prediction(path=path, error=decoded[i])
                    continue
                p = probs[row[i]]
                order = np.argsort(-p, kind="stable")[:top_k]
                yield Prediction(path=path, top=[(names[j], float(p[j])) for j in order])
            done += len(batch)
            if on_batch:
                on_batch(done)
