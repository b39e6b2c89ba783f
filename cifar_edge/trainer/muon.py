"""Muon for the conv kernels, Nesterov SGD for everything else, in one Keras optimizer.

Keller Jordan's airbench94_muon trains CIFAR-10 CNNs in fewer epochs by replacing each conv
kernel's momentum step with its nearest semi-orthogonal matrix (five Newton-Schulz iterations)
and holding every kernel at a fixed norm, which BatchNorm makes harmless.  `keras.optimizers.Muon`
applies Muon only to 2-D variables and AdamW to the rest, so conv kernels (4-D) would miss it;
this optimizer flattens them to (kh * kw * in, out) instead, and leaves BatchNorm offsets and the
dense head to plain Nesterov SGD with the schedule's learning rate.
"""

from __future__ import annotations

import keras
from keras import ops

# The quintic Newton-Schulz coefficients of Muon (maximal slope at zero).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(x, steps: int = 5):
    """Approximately U V^T of x = U S V^T, by `steps` Newton-Schulz iterations."""
    a, b, c = NS_COEFFICIENTS
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = ops.transpose(x)
    x = x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-7)
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.transpose(x) if transpose else x


@keras.saving.register_keras_serializable(package="cifar_edge")
class ConvMuon(keras.optimizers.Optimizer):
    """Muon on 4-D conv kernels, Keras' Nesterov SGD on every other variable.

    Args:
        learning_rate: the SGD rate (a float or a schedule); Muon's is `muon_lr_ratio` times it.
        momentum: SGD momentum.
        muon_lr_ratio: Muon's learning rate as a fraction of `learning_rate`.
        muon_momentum: Muon's (Nesterov) momentum.
        ns_steps: Newton-Schulz iterations per update.
    """

    def __init__(self, learning_rate=0.4, momentum: float = 0.9, muon_lr_ratio: float = 0.25,
                 muon_momentum: float = 0.7, ns_steps: int = 5, name: str = "conv_muon", **kwargs) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.muon_lr_ratio = muon_lr_ratio
        self.muon_momentum = muon_momentum
        self.ns_steps = ns_steps

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        m = self.momentums[self._get_variable_index(variable)]
        if len(variable.shape) == 4:
            mu = self.muon_momentum
            self.assign(m, m * mu + gradient)
            out = variable.shape[-1]
            update = orthogonalize(ops.reshape(gradient + mu * m, (-1, out)), self.ns_steps)
            # Hold the kernel at norm sqrt(out): BatchNorm after every conv makes its scale free.
            kernel = variable * (out ** 0.5 / (ops.sqrt(ops.sum(ops.square(variable))) + 1e-12))
            self.assign(variable, kernel - lr * self.muon_lr_ratio * ops.reshape(update, variable.shape))
        else:
            # keras.optimizers.SGD(nesterov=True), step for step.
            mu = self.momentum
            self.assign(m, m * mu - gradient * lr)
            self.assign_add(variable, m * mu - gradient * lr)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(momentum=self.momentum, muon_lr_ratio=self.muon_lr_ratio,
                      muon_momentum=self.muon_momentum, ns_steps=self.ns_steps)
        return config
