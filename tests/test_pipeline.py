"""tf.data pipelines (cifar_edge.trainer.pipeline): real images in, the batches the recipes ask for out."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_edge.runtime.manifest import Preprocessing
from cifar_edge.trainer.pipeline import eval_dataset, train_dataset


@pytest.mark.parametrize("augment", ["flip-shift", "flip-crop", "none"])
def test_training_batches_have_no_autotuner(test_images_200, augment):
    # The autotuner's sleeping thread stalled each epoch boundary for up to a minute.
    images, labels = test_images_200
    ds = train_dataset(images, labels, 64, Preprocessing(), augment, 0.1, seed=0)
    assert ds.options().autotune.enabled is False
    x, y = next(iter(ds))
    assert tuple(x.shape) == (64, 32, 32, 3) and tuple(y.shape) == (64,)
    assert float(np.min(x)) >= 0.0 and float(np.max(x)) <= 1.0
    assert eval_dataset(images, labels, 64, Preprocessing()).options().autotune.enabled is False


def _shift_of(aug: np.ndarray, img: np.ndarray, pad: int) -> tuple[bool, int, int] | None:
    """(mirrored, dy, dx) such that aug's centre is img (or its mirror) shifted by dy, dx; None if none is."""
    core = aug[pad:32 - pad, pad:32 - pad]
    for mirrored, view in ((False, img), (True, img[:, ::-1])):
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                if np.allclose(core, view[pad + dy:32 - pad + dy, pad + dx:32 - pad + dx], atol=1e-6):
                    return mirrored, dy, dx
    return None


def test_flip_crop_shifts_by_at_most_the_padding(test_images_200):
    image = test_images_200[0][0]
    pad = 2
    ds = train_dataset(np.repeat(image[None], 64, axis=0), np.zeros(64, np.int64), 64, Preprocessing(),
                       "flip-crop", 0.0, seed=0, crop_pad=pad)
    batch = np.asarray(next(iter(ds))[0])
    shifts = [_shift_of(aug, image.astype(np.float32) / 255, pad) for aug in batch]
    assert None not in shifts  # every sample is the image, maybe mirrored, moved by <= pad pixels
    assert len(set(shifts)) > 10  # and the flips and offsets do vary
    assert {m for m, _, _ in shifts} == {False, True}


def _two_epochs(images, labels, seed):
    ds = train_dataset(images, labels, 32, Preprocessing(), "flip-crop", 0.0, seed=seed, crop_pad=2)
    return [np.concatenate([np.asarray(x) for x, _ in ds]) for _ in range(2)]


def test_flip_crop_batches_repeat_for_the_same_seed(test_images_200):
    # Stateless, per-batch seeds: parallel map calls cannot reorder the random numbers.
    images, labels = test_images_200
    first, again, other = _two_epochs(images, labels, 7), _two_epochs(images, labels, 7), _two_epochs(images, labels, 8)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # each epoch is shuffled and augmented anew
    assert not np.array_equal(first[0], other[0])
