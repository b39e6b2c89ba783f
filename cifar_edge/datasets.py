"""Read CIFAR-10 style data into uint8 arrays, from any of the forms users hold.

Accepted by every `--data` option:
- a `cifar-10-batches-py` folder (or a folder holding one), whatever its batch sizes;
- the `cifar-10-python.tar.gz` archive, read in place;
- an image-folder tree `train/<class>/*`, `test/<class>/*`, or a single
  folder of class sub-folders (used as whatever split is asked for);
- nothing (or "keras.datasets.cifar10"): the Keras CIFAR-10 download (needs
  the [train] extra, and a network unless Keras has it cached).

TF-free (NumPy + Pillow): images in folders go through the runtime's
`load_image`, so training, evaluation and `infer` decode identically.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import pickle
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifar_edge.errors import BadInputError
from cifar_edge.runtime.images import ImageReadError, image_extensions, load_image

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
SPLITS = ("train", "test")
KERAS_SOURCE = "keras.datasets.cifar10"  # recorded as the data source of runs without --data


@dataclass
class Split:
    """Images (N, 32, 32, 3) uint8 and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """The splits that were asked for, with the class names and where they came from."""

    class_names: list[str]
    source: str
    splits: dict[str, Split] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise BadInputError(f"{self.source} has no {name} split")
        return self.splits[name]


def first_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the first `limit` items of each class, in original order."""
    if not limit:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        keep[np.flatnonzero(labels == cls)[:limit]] = True
    return np.flatnonzero(keep)


def _limited(split: Split, limit: int | None) -> Split:
    idx = first_per_class(split.labels, limit)
    if len(idx) == len(split.labels):
        return split
    return Split(split.images[idx], split.labels[idx])


# --- cifar-10-batches-py ---------------------------------------------------

_BATCH_RE = {"train": re.compile(r"^data_batch_(\d+)$"), "test": re.compile(r"^test_batch$")}


def _unpickle(data: bytes, name: str) -> dict:
    try:
        obj = pickle.loads(data, encoding="bytes")
        rows = np.asarray(obj[b"data"], dtype=np.uint8)
        labels = np.asarray(obj.get(b"labels", obj.get(b"fine_labels")), dtype=np.int64)
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise BadInputError(f"{name} is not a readable CIFAR batch ({type(exc).__name__})") from None
    if rows.ndim != 2 or rows.shape[1] != 3072 or len(labels) != len(rows):
        raise BadInputError(f"{name}: expected (N, 3072) pixel rows, got {rows.shape}")
    return {"images": rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), "labels": labels}


def _from_batches(named: dict[str, Callable[[], bytes]], source: str, splits, limit) -> Dataset:
    """`named` maps member names (data_batch_1, test_batch, batches.meta) to readers."""
    class_names = CIFAR10_CLASSES
    if "batches.meta" in named:
        try:
            meta = pickle.loads(named["batches.meta"](), encoding="bytes")
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
        except Exception:
            raise BadInputError(f"{source}: batches.meta is not readable") from None
    dataset = Dataset(class_names=class_names, source=source)
    for split in splits:
        members = [n for n in named if _BATCH_RE[split].match(n)]
        members.sort(key=lambda n: int(_BATCH_RE[split].match(n).group(1)) if split == "train" else 0)
        if not members:
            continue
        parts = [_unpickle(named[m](), f"{source}/{m}") for m in members]
        data = Split(np.concatenate([p["images"] for p in parts]), np.concatenate([p["labels"] for p in parts]))
        dataset.splits[split] = _limited(data, limit)
    return dataset


def _batches_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file() or any(candidate.glob("data_batch_*")):
            return candidate
    return None


def _read_file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _load_tar(path: Path, splits, limit) -> Dataset:
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            blobs = {name: tar.extractfile(m).read() for name, m in members.items()
                     if name == "batches.meta" or any(r.match(name) for r in _BATCH_RE.values())}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadInputError(f"{path} is not a readable CIFAR-10 archive: {exc}") from None
    if not blobs:
        raise BadInputError(f"{path} holds no CIFAR-10 batches")
    return _from_batches({k: (lambda b=b: b) for k, b in blobs.items()}, str(path), splits, limit)


# --- image folders -----------------------------------------------------------

def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_folder_split(root: Path, class_names: list[str], limit, progress) -> Split:
    extensions = image_extensions()
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions)
        if limit:
            images = images[:limit]
        files += images
        labels += [label] * len(images)
    if not files:
        raise BadInputError(f"{root} holds no images in class folders")
    if progress:
        progress(f"reading {len(files)} images from {root}")
    with futures.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        try:
            images = list(pool.map(load_image, files, chunksize=256))
        except ImageReadError as exc:
            raise BadInputError(f"an image under {root} is unreadable: {exc}") from None
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64))


def _load_folders(path: Path, splits, limit, progress) -> Dataset:
    split_dirs = {s: path / s for s in SPLITS if (path / s).is_dir()}
    if split_dirs:
        class_names = sorted({d.name for s in split_dirs.values() for d in _class_dirs(s)})
        dataset = Dataset(class_names=class_names, source=str(path))
        for split in splits:
            if split in split_dirs:
                dataset.splits[split] = _load_folder_split(split_dirs[split], class_names, limit, progress)
        return dataset
    classes = _class_dirs(path)
    if not classes:
        raise BadInputError(
            f"{path} is not a CIFAR-10 data folder (expected cifar-10-batches-py, "
            "train/<class>/ and test/<class>/, or class folders)"
        )
    class_names = [d.name for d in classes]
    # One folder of class folders: serve it as whichever split is asked for.
    data = _load_folder_split(path, class_names, limit, progress)
    return Dataset(class_names=class_names, source=str(path), splits={s: data for s in splits})


# --- Keras download ------------------------------------------------------------

def _load_keras_download(splits, limit) -> Dataset:
    try:
        from keras.datasets import cifar10
    except ImportError:
        raise BadInputError("no --data given and Keras is not installed; pass --data PATH") from None
    try:
        (x_train, y_train), (x_test, y_test) = cifar10.load_data()
    except Exception as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BadInputError(
            f"could not download CIFAR-10 ({reason}); pass --data with a cifar-10-batches-py "
            "folder, cifar-10-python.tar.gz or an image-folder tree"
        ) from None
    arrays = {"train": (x_train, y_train), "test": (x_test, y_test)}
    dataset = Dataset(class_names=CIFAR10_CLASSES, source=KERAS_SOURCE)
    for split in splits:
        x, y = arrays[split]
        dataset.splits[split] = _limited(Split(x.astype(np.uint8), y.reshape(-1).astype(np.int64)), limit)
    return dataset


def load_dataset(
    path: str | os.PathLike[str] | None,
    splits: tuple[str, ...] = SPLITS,
    limit_per_class: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Dataset:
    """Load the requested splits from `path` (see module doc for the forms)."""
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
    if path is None or str(path) == KERAS_SOURCE:
        return _load_keras_download(splits, limit_per_class)
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"data not found: {path}")
    if path.is_file():
        return _load_tar(path, splits, limit_per_class)
    batches = _batches_dir(path)
    if batches is not None:
        named = {p.name: _read_file(p) for p in batches.iterdir() if p.is_file()}
        return _from_batches(named, str(path), splits, limit_per_class)
    return _load_folders(path, splits, limit_per_class, progress)
