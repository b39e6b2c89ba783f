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

import numpy as np

WHITEN_LAYER = "whiten"
EPSILON = 5e-4  # keeps the near-zero-variance patch directions from exploding
MAX_IMAGES = 10_000
PATCH_STRIDE = 7  # every 7th patch of the sampled images is plenty for a 12x12 covariance


def patch_whitening(images: np.ndarray, kernel_size: int, eps: float = EPSILON) -> tuple[np.ndarray, np.ndarray]:
    """Conv kernel (k, k, C, 2*k*k*C) and bias that whiten (and center) the k x k patches of `images`.

    `images` are preprocessed float images (N, H, W, C), as the model sees them.
    """
    x = np.asarray(images[:MAX_IMAGES], dtype=np.float32)
    channels = x.shape[-1]
    patches = np.lib.stride_tricks.sliding_window_view(x, (kernel_size, kernel_size, channels), axis=(1, 2, 3))
    patches = patches.reshape(-1, kernel_size * kernel_size * channels)[::PATCH_STRIDE].astype(np.float64)
    mean = patches.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    filters = (eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)).T
    filters = np.concatenate([filters, -filters])
    kernel = filters.reshape(-1, kernel_size, kernel_size, channels).transpose(1, 2, 3, 0)
    bias = -(filters @ mean)
    return kernel.astype(np.float32), bias.astype(np.float32)


def fit_whitening(model, images: np.ndarray) -> bool:
    """Set the model's whitening layer (if it has one) from preprocessed `images`; True if it had one."""
    names = [layer.name for layer in model.layers]
    if WHITEN_LAYER not in names:
        return False
    layer = model.get_layer(WHITEN_LAYER)
    kernel, bias = patch_whitening(images, layer.kernel_size[0])
    layer.set_weights([kernel, bias])
    return True
