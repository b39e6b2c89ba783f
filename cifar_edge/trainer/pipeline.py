"""tf.data input pipelines: uint8 arrays in, preprocessed (augmented) batches out.

The scale/offset applied here is the one written to the manifest, so the
ONNX runtime reproduces it exactly.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cifar_edge.runtime.manifest import Preprocessing

PARALLEL_CALLS = 2  # the reference machine has 2 cores
PREFETCH_BATCHES = 2


def _without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Fixed parallelism instead of tf.data's autotuner.

    The autotuner's background thread sleeps for up to a minute between
    rounds, and Keras deletes each epoch's iterator at the start of the next
    epoch, which waits for that thread: on the 2-core reference machine this
    stalled training for 10-70 s at most epoch boundaries (py-spy: the main
    thread in ~IteratorResource, waiting on LogicalThreadWrapper), a third
    of the `edge` preset's time budget.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _normalize(preprocessing: Preprocessing):
    scale = tf.constant(preprocessing.scale, tf.float32)
    offset = tf.constant(preprocessing.offset, tf.float32)
    return lambda x: tf.cast(x, tf.float32) * scale + offset


def _flip_shift(shift: float, seed: int):
    """Random horizontal flip and ±shift translation (nearest fill), like ImageDataGenerator."""
    import keras

    augmenter = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(shift, shift, fill_mode="nearest", seed=seed + 1),
        ]
    )
    return lambda x: augmenter(x, training=True)


def _flip_crop(pad: int = 4):
    """Random horizontal flip and random 32x32 crop of the reflect-padded image.

    Stateless random ops, seeded per batch: the same `--seed` gives the same augmented batches
    whichever of the parallel map calls runs first (stateful ops hand out their numbers in the
    order the calls happen to run).
    """

    def apply(x, seed):
        n = tf.shape(x)[0]
        flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        x = tf.image.stateless_random_flip_left_right(x, flip_seed)
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        offsets = tf.random.stateless_uniform([n, 2], crop_seed, 0, 2 * pad + 1, dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(32)[None, :]
        cols = offsets[:, 1:] + tf.range(32)[None, :]
        x = tf.gather(padded, rows, axis=1, batch_dims=1)
        return tf.gather(x, cols, axis=2, batch_dims=1)

    return apply


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    preprocessing: Preprocessing,
    augment: str,
    shift: float,
    seed: int,
    crop_pad: int = 4,
) -> tf.data.Dataset:
    """Shuffled, augmented, preprocessed training batches (reshuffled each epoch)."""
    normalize = _normalize(preprocessing)
    if augment not in ("flip-shift", "flip-crop", "none"):
        raise ValueError(f"unknown augmentation {augment!r}")
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if augment == "flip-crop":
        crop = _flip_crop(crop_pad)
        # one stateless seed pair per batch, new ones each epoch, all from `seed`
        batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, batch_seeds))
        ds = ds.map(lambda xy, s: (crop(normalize(xy[0]), s), xy[1]), num_parallel_calls=PARALLEL_CALLS)
    elif augment == "flip-shift":
        # The notebook's Keras layers (stateful seeds): not bit-repeatable under parallel calls.
        aug = _flip_shift(shift, seed)
        ds = ds.map(lambda x, y: (aug(normalize(x)), y), num_parallel_calls=PARALLEL_CALLS)
    else:
        ds = ds.map(lambda x, y: (normalize(x), y), num_parallel_calls=PARALLEL_CALLS)
    return _without_autotune(ds.prefetch(PREFETCH_BATCHES))


def eval_dataset(images: np.ndarray, labels: np.ndarray | None, batch_size: int,
                 preprocessing: Preprocessing) -> tf.data.Dataset:
    """Preprocessed batches in order, without augmentation."""
    normalize = _normalize(preprocessing)
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(normalize)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).batch(batch_size)
        ds = ds.map(lambda x, y: (normalize(x), y), num_parallel_calls=PARALLEL_CALLS)
    return _without_autotune(ds.prefetch(PREFETCH_BATCHES))
