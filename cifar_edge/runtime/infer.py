"""Batch inference over image files: decode one batch ahead while the model runs.

A plain 32x32 JPEG decodes in ~45 us (simplejpeg, file read included) and
onnxruntime releases the GIL while it runs, so by default one decoding
thread keeps the next batch ready while the model classifies this one.
Formats that Pillow decodes in Python-heavy code (PNG, big photos) can use
worker processes instead (`workers`).  Either way at most a few batches are
in memory, whatever the folder size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifar_edge.errors import BadInputError
from cifar_edge.runtime.classifier import Classifier
from cifar_edge.runtime.images import ImageReadError, load_image
from cifar_edge.runtime.manifest import IMAGE_SIZE


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


def _decode_pool(workers: int):
    """One decoding thread (workers=0) or `workers` processes.

    Imported here, not at the top, to keep a one-image `infer` start fast.
    """
    import concurrent.futures as futures

    if not workers:
        return futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifar-edge-decode")
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_ignore_sigint)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the main process, which stops them (no traceback per worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def predict_files(
    classifier: Classifier,
    files: Sequence[Path],
    batch_size: int = 64,
    top_k: int = 1,
    workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[Prediction]:
    """Yield one Prediction per file, in input order.

    Unreadable files yield a Prediction with `error` set; the rest go on.
    Batches decode ahead of the model in one thread (`workers=0`) or in
    `workers` processes, at most 1 + 2 * workers batches ahead.  A single
    batch decodes right here.  `on_batch(n)` is called after each batch
    with the number of files done.
    """
    top_k = max(1, min(top_k, len(classifier.class_names)))
    names = classifier.class_names
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    pool = _decode_pool(workers) if len(batches) > 1 else None
    if pool:
        from concurrent.futures import BrokenExecutor
    ahead = 1 + 2 * workers
    try:
        pending: deque = deque()
        submitted = 0
        done = 0
        for b, batch in enumerate(batches):
            if pool:
                while submitted < len(batches) and submitted <= b + ahead:
                    pending.append(pool.submit(decode_batch, batches[submitted]))
                    submitted += 1
                try:
                    images, errors = pending.popleft().result()
                except BrokenExecutor as exc:
                    raise BadInputError(f"a decoding worker process died ({exc}); "
                                        "try again with --workers 0") from None
            else:
                images, errors = decode_batch(batch)
            good = [i for i in range(len(batch)) if i not in errors]
            probs = classifier.predict(images[good] if errors else images) if good else None
            tops = np.argsort(-probs, axis=1, kind="stable")[:, :top_k] if good else None
            row = {i: r for r, i in enumerate(good)}
            for i, path in enumerate(batch):
                if i in errors:
                    yield Prediction(path=path, error=errors[i])
                    continue
                r = row[i]
                yield Prediction(path=path, top=[(names[j], float(probs[r, j])) for j in tops[r]])
            done += len(batch)
            if on_batch:
                on_batch(done)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
