"""`cifar-edge train`: load data, build a preset, fit it with its recipe, write reports."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifar_edge.datasets import Dataset, Split, load_dataset
from cifar_edge.errors import BadInputError
from cifar_edge.runtime.files import atomic_path, write_json, write_text
from cifar_edge.runtime.manifest import Preprocessing
from cifar_edge.presets import UNCAPPED_EPOCHS, Recipe

MODEL_FILE = "model.keras"
# What a budgeted run keeps back after fit() (measured on the 2-core reference CPU): saving and
# reports, plus test passes at a conservative Keras inference speed.
POST_TRAINING_S = 3.0
EVAL_IMAGES_PER_S = 1500
TRAINING_FILE = "training.json"


@dataclass
class TrainConfig:
    """Everything one `train` run needs; the recipe holds the preset's defaults."""

    model: str
    recipe: Recipe
    out: Path
    data: str | None = None
    seed: int = 42
    limit: int | None = None
    val_size: int = 5000
    val_on_test: bool = False
    time_budget: float | None = None  # minutes, wall time of the whole run
    preprocessing: Preprocessing = field(default_factory=Preprocessing)


def holdout_split(split: Split, size: int, seed: int) -> tuple[Split, Split]:
    """Stratified hold-out of `size` images (capped at 20% of the set) for validation."""
    from sklearn.model_selection import train_test_split

    n = len(split)
    size = min(size, n // 5)
    n_classes = len(np.unique(split.labels))
    if size < n_classes:
        raise BadInputError(f"training set of {n} images is too small for a validation hold-out")
    train_idx, val_idx = train_test_split(
        np.arange(n), test_size=size, stratify=split.labels, random_state=seed
    )
    return (Split(split.images[train_idx], split.labels[train_idx]),
            Split(split.images[val_idx], split.labels[val_idx]))


class EpochLog:
    """A Keras callback printing one line per epoch with time and the time left."""

    def __new__(cls, progress, echo: Callable[[str], None]):
        import keras

        class _EpochLog(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.start = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch_start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                now = time.perf_counter()
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                parts = [f"epoch {epoch + 1}"]
                for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    if key in logs:
                        parts.append(f"{key} {logs[key]:.4f}")
                parts.append(f"lr {lr:.2e}")
                parts.append(f"{now - self.epoch_start:.1f}s")
                done = progress.fraction
                if 0 < done < 1:
                    parts.append(f"{done:.0%} done, at most {(now - self.start) * (1 - done) / done:.0f}s left")
                echo("  ".join(parts))

        return _EpochLog()


def _optimizer(recipe: Recipe):
    import keras

    if recipe.schedule not in ("plateau", "onecycle"):
        raise BadInputError(f"unknown schedule {recipe.schedule!r}")
    if recipe.optimizer == "muon":
        from cifar_edge.trainer.muon import ConvMuon

        opt = ConvMuon(learning_rate=recipe.learning_rate, momentum=recipe.momentum,
                       muon_lr_ratio=recipe.muon_lr_ratio, muon_momentum=recipe.muon_momentum,
                       weight_decay=recipe.weight_decay or None)
    elif recipe.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=recipe.learning_rate, momentum=recipe.momentum, nesterov=True,
                                   weight_decay=recipe.weight_decay or None)
    elif recipe.weight_decay:
        opt = keras.optimizers.AdamW(learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay)
    else:
        return keras.optimizers.Adam(learning_rate=recipe.learning_rate)
    # Decay the weights, not the BatchNorm scales/offsets or biases.
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


def cpu_has_bf16() -> bool:
    """Native bfloat16 matrix units (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _callbacks(recipe: Recipe, steps_per_epoch: int, budget_s: float | None, val_images: int, echo):
    """The recipe as callbacks; the first one returned is the Progress tracker."""
    import keras

    from cifar_edge.trainer.schedules import OneCycle, Progress

    # Fit the epochs to the budget only when no epoch count was asked for (--time-budget alone);
    # a preset's or --epochs' count is the plan, the budget its guard.
    progress = Progress(steps_per_epoch * recipe.epochs, budget_s, steps_per_epoch,
                        epoch_overhead_s=val_images / EVAL_IMAGES_PER_S, echo=echo,
                        fit_epochs=recipe.epochs >= UNCAPPED_EPOCHS)
    callbacks = [progress, EpochLog(progress, echo)]
    if recipe.schedule == "onecycle":
        callbacks.append(OneCycle(progress, recipe.learning_rate))
    else:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=recipe.reduce_lr_factor, patience=recipe.reduce_lr_patience
        ))
    if recipe.early_stopping_patience is not None:
        # Keras restores the best weights at the end of training however it ends
        # (patience, epochs or time budget).
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=recipe.early_stopping_patience, restore_best_weights=True
        ))
    return callbacks


def predict_probabilities(model, images: np.ndarray, preprocessing: Preprocessing,
                          batch_size: int = 256) -> np.ndarray:
    """Keras class probabilities for uint8 images, preprocessed as in training."""
    from cifar_edge.trainer.pipeline import eval_dataset

    return model.predict(eval_dataset(images, None, batch_size, preprocessing), verbose=0)


def train(config: TrainConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one training job end to end; returns the summary written to training.json."""
    import keras
    import tensorflow as tf

    from cifar_edge import reports
    from cifar_edge.keras_layers import with_flip_tta
    from cifar_edge.trainer.macs import count_macs
    from cifar_edge.trainer.models import build_model
    from cifar_edge.trainer.pipeline import eval_dataset, train_dataset
    from cifar_edge.trainer.whitening import MAX_IMAGES, fit_whitening

    started = time.perf_counter()
    recipe = config.recipe
    keras.utils.set_random_seed(config.seed)

    dataset: Dataset = load_dataset(config.data, limit_per_class=config.limit, progress=echo)
    train_split = dataset.split("train")
    test_split = dataset.split("test")
    if config.val_on_test:
        fit_split, val_split, val_name = train_split, test_split, "test set (as in the notebook)"
    else:
        fit_split, val_split = holdout_split(train_split, config.val_size, config.seed)
        val_name = f"stratified hold-out of {len(val_split)} training images"
    loaded_s = time.perf_counter() - started
    echo(f"data: {dataset.source}: {len(fit_split)} train, {len(val_split)} validation ({val_name}), "
         f"{len(test_split)} test; loaded in {loaded_s:.1f}s")

    num_classes = len(dataset.class_names)
    bf16 = recipe.precision == "bf16" and cpu_has_bf16()
    if recipe.precision == "bf16" and not bf16:
        echo("note: this CPU has no native bfloat16; training in float32")
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    try:
        model = build_model(config.model, num_classes)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if fit_whitening(model, fit_split.images, seed=config.seed, preprocess=config.preprocessing.apply):
        echo(f"whitening layer fitted to {min(len(fit_split), MAX_IMAGES)} training images (a random sample)")
    params, macs = model.count_params(), count_macs(model)
    echo(f"model: {config.model}: {params:,} parameters, {macs / 1e6:.1f}M MACs per image")

    def one_hot(x, y):
        return x, tf.one_hot(y, num_classes)

    train_ds = train_dataset(fit_split.images, fit_split.labels, recipe.batch_size,
                             config.preprocessing, recipe.augment, recipe.shift, config.seed,
                             recipe.crop_pad).map(one_hot)
    val_ds = eval_dataset(val_split.images, val_split.labels, 256, config.preprocessing).map(one_hot)
    steps_per_epoch = math.ceil(len(fit_split) / recipe.batch_size)
    model.compile(
        optimizer=_optimizer(recipe),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )
    echo(f"training: up to {recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.learning_rate:g} "
         f"({recipe.schedule}), augment {recipe.augment}, {'bf16 mixed precision' if bf16 else 'float32'}")
    fit_started = time.perf_counter()
    budget_s = None
    if config.time_budget:
        # Leave room for what follows fit(): the last epoch's validation, the test evaluation
        # (two passes with the test-time flip), saving and the reports.
        spent = time.perf_counter() - started
        test_passes = 2 if recipe.flip_tta else 1  # the image, then its mirror
        evaluated = len(val_split) + test_passes * len(test_split)  # the last validation runs after the stop
        reserve = max(POST_TRAINING_S + evaluated / EVAL_IMAGES_PER_S,
                      0.04 * config.time_budget * 60)
        budget_s = config.time_budget * 60 - spent - reserve
        if budget_s <= 0:
            raise BadInputError(f"the time budget of {config.time_budget:g} min is spent before training "
                                f"starts (loading took {spent:.0f}s)")
        echo(f"time budget: {config.time_budget:g} min in all, {budget_s:.0f}s for training")
    callbacks = _callbacks(recipe, steps_per_epoch, budget_s, len(val_split), echo)
    history = model.fit(train_ds, validation_data=val_ds, epochs=recipe.epochs, verbose=0,
                        callbacks=callbacks)
    stopped_by_budget = callbacks[0].stopped_by_budget
    fit_s = time.perf_counter() - fit_started
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    # Save (and test) a plain float32 model with the trained weights: no bf16 casts for the exporter,
    # no optimizer or compile state (loading needs no training code, e.g. the Muon optimizer).
    trained = model
    model = build_model(config.model, num_classes)
    model.set_weights(trained.get_weights())

    single_view_accuracy = None
    probs = predict_probabilities(model, test_split.images, config.preprocessing)
    if recipe.flip_tta:
        single_view_accuracy = float((probs.argmax(1) == test_split.labels).mean())
        mirrored = predict_probabilities(model, test_split.images[:, :, ::-1], config.preprocessing)
        probs = (probs + mirrored) / 2  # what the saved flip-averaged model computes, without a third pass
        model = with_flip_tta(model)
        echo(f"test accuracy {single_view_accuracy:.4f} without test-time flip; saving the flip-averaged model "
             f"({count_macs(model) / 1e6:.1f}M MACs per image)")
    metrics = reports.classification_metrics(test_split.labels, probs.argmax(1), dataset.class_names)
    best_epoch = int(np.argmin(hist["val_loss"])) + 1 if recipe.early_stopping_patience is not None \
        else len(hist["loss"])
    val_accuracy = hist["val_accuracy"][best_epoch - 1]
    echo(f"test accuracy {metrics['accuracy']:.4f} on {len(test_split)} images of {dataset.source}; "
         f"validation accuracy {val_accuracy:.4f} (epoch {best_epoch})")

    out = config.out
    with atomic_path(out / MODEL_FILE) as tmp:
        model.save(tmp)
    wall_s = time.perf_counter() - started
    summary = {
        "format": "cifar-edge-training",
        "model": config.model,
        "model_file": MODEL_FILE,
        "class_names": dataset.class_names,
        "preprocessing": config.preprocessing.to_dict(),
        "input_shape": [32, 32, 3],
        "parameters": int(params),
        "macs_per_image": int(count_macs(model)),  # of the saved model (both views with flip_tta)
        "flip_tta": recipe.flip_tta,
        "data": {
            "source": str(Path(dataset.source).resolve()) if config.data else dataset.source,
            "train_images": len(fit_split),
            "validation_images": len(val_split),
            "validation": val_name,
            "test_images": len(test_split),
            "limit_per_class": config.limit,
        },
        "recipe": recipe.to_dict(),
        "seed": config.seed,
        "epochs_run": len(hist["loss"]),
        "time_budget_min": config.time_budget,
        "stopped_by_time_budget": stopped_by_budget,
        "planned_epochs": callbacks[0].planned_epochs,  # fitted to the budget; None without one
        "best_epoch": best_epoch,
        "validation_accuracy": float(val_accuracy),
        "test_accuracy": metrics["accuracy"],
        "test_accuracy_single_view": single_view_accuracy,
        "test_loss": None,
        "wall_time_s": round(wall_s, 1),
        "fit_time_s": round(fit_s, 1),
        "precision": "bf16 mixed" if bf16 else "float32",
        "environment": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "machine": platform.machine(),
        },
    }
    summary["test_loss"] = float(keras.losses.CategoricalCrossentropy()(
        np.eye(num_classes)[test_split.labels], probs))
    write_json(out / TRAINING_FILE, summary)
    write_json(out / "history.json", hist)
    reports.write_history_csv(hist, out / "history.csv")
    write_json(out / "test_metrics.json", {k: v for k, v in metrics.items() if k != "report_text"}
               | {"data": summary["data"]["source"]})
    write_text(out / "classification_report.txt",
               f"{config.model} on {dataset.source} ({len(test_split)} test images)\n\n{metrics['report_text']}")
    reports.plot_confusion_matrix(metrics["confusion_matrix"], dataset.class_names, out / "confusion_matrix.png",
                                  f"{config.model}: test accuracy {metrics['accuracy']:.2%}")
    reports.plot_history(hist, out / "training_curves.png", f"{config.model} training")
    echo(f"wrote {out / MODEL_FILE} and reports in {out}/ ({wall_s:.0f}s)")
    return summary
