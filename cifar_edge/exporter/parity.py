"""Compare an ONNX model's probabilities with the Keras model's on real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Parity:
    """How closely one model's probabilities follow the reference (Keras)."""

    images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    finite: bool

    def to_dict(self) -> dict:
        """JSON-safe: a non-finite difference is written as null."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in asdict(self).items()}


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Probabilities (N, C) vs reference (N, C). A NaN/Inf on either side makes `finite` False."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {candidate.shape}")
    finite = bool(np.isfinite(reference).all() and np.isfinite(candidate).all())
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    max_diff = float(np.nanmax(diff)) if finite else float("inf")
    mean_diff = float(np.nanmean(diff)) if finite else float("inf")
    agreement = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    return Parity(int(len(reference)), max_diff, mean_diff, agreement, finite)


def failures(name: str, parity: Parity, max_abs_diff: float | None, min_agreement: float | None) -> list[str]:
    """Human-readable reasons `parity` fails its limits (empty when it passes)."""
    problems = []
    if not parity.finite:
        problems.append(f"{name} or Keras produced NaN or Inf probabilities")
    else:
        if max_abs_diff is not None and parity.max_abs_diff > max_abs_diff:
            problems.append(f"{name} max abs difference {parity.max_abs_diff:.3g} exceeds {max_abs_diff:g}")
        if min_agreement is not None and parity.top1_agreement < min_agreement:
            problems.append(f"{name} top-1 agreement {parity.top1_agreement:.4f} is below {min_agreement:g}")
    return problems
