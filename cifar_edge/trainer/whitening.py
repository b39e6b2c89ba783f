"""A frozen patch-whitening first layer, fitted to the training images.

A short training run cannot afford to learn decorrelated low-level features;
the `edge` preset gets them for free instead (as in Keller Jordan's airbench):
its first conv is a fixed 2x2 filter bank made of the eigenvectors of the
training set's 2x2 patch covariance, each scaled by 1/sqrt(eigenvalue), in
both signs so that the ReLU after it loses nothing.  It is an ordinary
`Conv2D` (named `WHITEN_LAYER`, not trainable), so export and quantization
treat it like any other conv.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

WHITEN_LAYER = "whiten"
EPSILON = 5e-4  # keeps the near-zero-variance patch directions from exploding
MAX_IMAGES = 10_000  # a random sample of this many images (training sets may be sorted by class)
PATCH_STEP = 2  # patches at every second row and column of the sampled images: plenty for a 12x12 covariance


def patch_whitening(images: np.ndarray, kernel_size: int, eps: float = EPSILON, seed: int = 0,
                    preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Conv kernel (k, k, C, 2*k*k*C) and bias that whiten (and center) the k x k patches of `images`.

    `images` (N, H, W, C) are as the model sees them, or become so through `preprocess`
    (applied to the sampled images only).
    """
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(len(images), MAX_IMAGES), replace=False))
    x = images[pick]
    x = np.asarray(preprocess(x) if preprocess else x, dtype=np.float32)
    channels = x.shape[-1]
    patches = np.lib.stride_tricks.sliding_window_view(x, (kernel_size, kernel_size, channels), axis=(1, 2, 3))
    patches = patches[:, ::PATCH_STEP, ::PATCH_STEP].reshape(-1, kernel_size * kernel_size * channels)
    patches = patches.astype(np.float64)
    mean = patches.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    filters = (eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)).T
    filters = np.concatenate([filters, -filters])
    kernel = filters.reshape(-1, kernel_size, kernel_size, channels).transpose(1, 2, 3, 0)
    bias = -(filters @ mean)
    return kernel.astype(np.float32), bias.astype(np.float32)


def fit_whitening(model, images: np.ndarray, seed: int = 0,
                  preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> bool:
    """Set the model's whitening layer (if it has one) from preprocessed `images`; True if it had one."""
    names = [layer.name for layer in model.layers]
    if WHITEN_LAYER not in names:
        return False
    layer = model.get_layer(WHITEN_LAYER)
    kernel, bias = patch_whitening(images, layer.kernel_size[0], seed=seed, preprocess=preprocess)
    layer.set_weights([kernel, bias])
    return True
