"""The `cifar-edge` command line (click).

Heavy packages are imported inside each command, never at module level:
`infer` must start without TensorFlow, and `--help` must be instant.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from pathlib import Path

from dataclasses import replace

import click

from cifar_edge import __version__
from cifar_edge.presets import DEFAULT_CALIB_SIZE
from cifar_edge.errors import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_SOME_INPUTS_FAILED,
    EXIT_WRITE_FAILED,
    BadInputError,
    CifarEdgeError,
    MissingDependencyError,
)

# Keep TensorFlow's C++ start-up chatter out of the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=r".*`shuffle=True` was passed.*")

_TRAIN_ONLY = {"tensorflow", "keras", "tf2onnx", "onnx", "sklearn", "matplotlib"}


def _import_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up log lines silenced.

    TensorFlow prints oneDNN/CUDA notices on fd 2 before absl logging is set
    up, so TF_CPP_MIN_LOG_LEVEL cannot hide them; stderr is pointed at
    /dev/null for the import and the first device query only.
    """
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    except ImportError as exc:
        raise _need_train_extra(exc) from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _need_train_extra(exc: ImportError) -> MissingDependencyError:
    name = (exc.name or "").split(".")[0]
    return MissingDependencyError(
        f"this command needs {name or 'the training packages'}: pip install 'cifar-edge[train]'"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="cifar-edge")
def cli() -> None:
    """Train a small Keras CIFAR-10 classifier, export it to ONNX (fp32 and int8),
    and run it on CPUs.

    \b
    Typical flow:
      cifar-edge train --data DATA --out runs/seed
      cifar-edge export runs/seed/model.keras --quantize
      cifar-edge infer runs/seed/model.int8.onnx images/
      cifar-edge evaluate runs/seed --data DATA
      cifar-edge bench runs/seed
    """


# --- train -------------------------------------------------------------------------

def _preset_help() -> str:
    # recipes.py is plain dataclasses (no TensorFlow): safe to read for --help.
    from cifar_edge.presets import RECIPES

    lines = ["\b", "Preset recipes (flags override):"]
    for name, r in RECIPES.items():
        stop = f"early stop {r.early_stopping_patience}" if r.early_stopping_patience is not None else "no early stop"
        budget = f", {r.time_budget:g} min budget" if r.time_budget else ""
        budget += ", test-time flip" if r.flip_tta else ""
        sched = (f"ReduceLROnPlateau {r.reduce_lr_factor:g}/{r.reduce_lr_patience}"
                 if r.schedule == "plateau" else "one-cycle")
        opt = {"sgd": f"sgd (momentum {r.momentum:g})",
               "muon": f"muon (lr x{r.muon_lr_ratio:g}, momentum {r.muon_momentum:g}) + sgd (momentum {r.momentum:g})",
               }.get(r.optimizer, r.optimizer)
        aug = f"flip-crop (pad {r.crop_pad})" if r.augment == "flip-crop" else r.augment
        lines.append(f"  {name}: {r.epochs} epochs, batch {r.batch_size}, {opt}, lr {r.learning_rate:g} {sched}, "
                     f"{stop}, {aug}, wd {r.weight_decay:g}, smoothing {r.label_smoothing:g}, {r.precision}{budget}")
    return "\n".join(lines)


_DATA_HELP = ("cifar-10-batches-py folder, cifar-10-python.tar.gz, or image folders "
              "(train/<class>/..., test/<class>/...).")


@cli.command(epilog=_preset_help() + "\n\n" + EXIT_CODES_HELP)
@click.option("--model", "model_name", type=click.Choice(["seed", "resnet8", "edge"]), default="seed",
              show_default=True, help="Preset: seed = the notebook CNN exactly; resnet8 = MLPerf Tiny ResNet-8; "
              "edge = the project's best network for a 2-core CPU.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help=_DATA_HELP + " Default: the Keras CIFAR-10 download.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder.  [default: runs/<model>]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs.  [default: the preset's]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: the preset's]")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate.  [default: the preset's]")
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "muon"]), default=None,
              help="adam (AdamW with --weight-decay), sgd (Nesterov), or muon (Muon on the conv kernels, "
              "Nesterov SGD on the rest).  [default: the preset's]")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
              help="Decoupled weight decay.  [default: the preset's]")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="[default: the preset's]")
@click.option("--augment", type=click.Choice(["flip-shift", "flip-crop", "none"]), default=None,
              help="flip-shift: flips + shifts (the notebook); flip-crop: flips + crops of the padded image.  "
              "[default: the preset's]")
@click.option("--flip-tta/--no-flip-tta", default=None,
              help="Save the model averaged over each image and its mirror image (test-time flip: "
              "2x the inference MACs).  [default: the preset's]")
@click.option("--seed", type=int, default=42, show_default=True, help="Random seed (weights, split, shuffling).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images per class of each split (quick runs).")
@click.option("--val-size", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Stratified validation hold-out from the training set (capped at 20%).")
@click.option("--val-on-test", is_flag=True,
              help="Validate (and early-stop) on the test set, as the original notebook did.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MINUTES",
              help="Wall-time budget for the whole run: training times its first steps, plans the whole "
              "epochs that fit (no epoch cap unless --epochs is given), fits the one-cycle schedule to "
              "them and stops on time.")
def train(model_name, data, out, epochs, batch_size, learning_rate, optimizer, weight_decay, label_smoothing,
          augment, flip_tta, seed, limit, val_size, val_on_test, time_budget) -> None:
    """Train a preset on CIFAR-10 and write the model and its reports.

    Writes OUT/model.keras, training.json (class names, preprocessing,
    recipe, metrics), history.json/.csv, test_metrics.json,
    classification_report.txt, confusion_matrix.png, training_curves.png.
    """
    _import_tensorflow()
    try:
        from cifar_edge.trainer.fit import TrainConfig
        from cifar_edge.trainer.fit import train as run_train
        from cifar_edge.presets import RECIPES, UNCAPPED_EPOCHS
    except ImportError as exc:
        raise _need_train_extra(exc) from None
    recipe = RECIPES[model_name].with_overrides(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                                optimizer=optimizer, weight_decay=weight_decay,
                                                label_smoothing=label_smoothing, augment=augment, flip_tta=flip_tta,
                                                time_budget=time_budget)
    if time_budget and epochs is None and recipe.schedule == "onecycle":
        recipe = recipe.with_overrides(epochs=UNCAPPED_EPOCHS)  # the budget plans the epochs
    if epochs is not None and time_budget is None:
        recipe = replace(recipe, time_budget=None)  # an explicit epoch count replaces the preset's budget
    config = TrainConfig(model=model_name, recipe=recipe, out=out or Path("runs") / model_name, data=data,
                         seed=seed, limit=limit, val_size=val_size, val_on_test=val_on_test,
                         time_budget=recipe.time_budget)
    run_train(config, echo=click.echo)




# --- export ------------------------------------------------------------------------

def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        values = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("expected a number or three comma-separated numbers") from None
    if len(values) not in (1, 3):
        raise click.BadParameter("expected a number or three comma-separated numbers")
    return values


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder.  [default: beside MODEL]")
@click.option("--quantize/--no-quantize", default=False, show_default=True,
              help="Also write a static int8 (QDQ, per-channel) model, MODEL.int8.onnx.")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="Calibration images (training data). " + _DATA_HELP + "  [default: the data in training.json]")
@click.option("--calib-size", type=click.IntRange(min=1), default=DEFAULT_CALIB_SIZE, show_default=True,
              help="Number of calibration images.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--reduce-range/--full-range", default=True, show_default=True,
              help="int8 weights in 7 bits: no saturation on x86 CPUs without VNNI (AVX2), "
              "where full-range weights cost accuracy.")
@click.option("--first-conv-8bit/--no-first-conv-8bit", default=False, show_default=True,
              help="With --reduce-range, keep the first conv's weights 8-bit (uint8, slower u8u8 kernels): "
              "for stems that lose accuracy at 7 bits.")
@click.option("--pad-stem/--no-pad-stem", default=True, show_default=True,
              help="Pad the int8 model's first conv to a multiple of 4 input channels (exact), for onnxruntime's "
              "batch-parallel x86 int8 conv kernel.  Not with --first-conv-8bit.")
@click.option("--parity-data", type=click.Path(path_type=Path), default=None,
              help="Images for the parity check (test split preferred).  [default: --calib-data]")
@click.option("--parity-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--int8-min-agreement", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Fail if int8 top-1 agreement with Keras is below this.")
@click.option("--scale", callback=_floats, default=None,
              help="Preprocessing x = pixel*scale + offset, one value or R,G,B.  "
              "[default: training.json's, else 1/255]")
@click.option("--offset", callback=_floats, default=None, help="See --scale.  [default: 0]")
@click.option("--class-names", default=None,
              help="Comma-separated class names.  [default: training.json's, else CIFAR-10's]")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--uint8-input", is_flag=True,
              help="The ONNX models take uint8 RGB pixels and scale them inside the graph.")
def export(model, out, quantize, calib_data, calib_size, calib_method, reduce_range, first_conv_8bit, pad_stem,
           parity_data, parity_size,
           int8_min_agreement, scale, offset, class_names, opset, uint8_input) -> None:
    """Convert a Keras classifier (.keras or .h5, 32x32x3 input) to ONNX.

    Writes MODEL.onnx (and MODEL.int8.onnx with --quantize) and manifest.json
    with class names, preprocessing, input/output spec, sha256 of each file
    and the parity numbers.  Parity: probabilities vs Keras on real images;
    fp32 max abs difference over 1e-4, or any NaN/Inf, fails with exit code 4.
    """
    _import_tensorflow()
    try:
        from cifar_edge.exporter.export import ExportConfig
        from cifar_edge.exporter.export import export as run_export
    except ImportError as exc:
        raise _need_train_extra(exc) from None
    from cifar_edge.runtime.manifest import Preprocessing

    preprocessing = None
    if scale is not None or offset is not None:
        preprocessing = Preprocessing.from_dict({"scale": scale or [1 / 255], "offset": offset or [0.0]})
    names = [n.strip() for n in class_names.split(",")] if class_names else None
    config = ExportConfig(model=model, out=out, quantize=quantize, calib_data=calib_data,
                          calib_size=calib_size, calib_method=calib_method, reduce_range=reduce_range,
                          first_conv_8bit=first_conv_8bit, pad_stem=pad_stem,
                          parity_data=parity_data,
                          parity_size=parity_size, preprocessing=preprocessing, class_names=names,
                          opset=opset, int8_min_agreement=int8_min_agreement, uint8_input=uint8_input)
    run_export(config, echo=click.echo)


# --- infer -------------------------------------------------------------------------

@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Manifest JSON.  [default: manifest.json beside MODEL]")
# 256: whole `infer` over the 10,000 CIFAR-10 (JPEG) test files, notebook CNN int8, 2 cores, three runs each:
# 1.50-1.77 s at 64, 1.51-1.52 s at 256, 1.60-1.62 s at 1024.
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per model call.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write results to FILE (atomically) instead of stdout.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="onnxruntime threads.  0 = all cores: one batch per core at once (one batch alone: "
                   "all cores on it); N = N intra-op threads, one batch at a time.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes decoding images ahead of the model; 0 = one decoding thread (best for JPEG; "
              "try processes for folders of PNG or large photos).")
def infer(model, paths, manifest, batch_size, top_k, fmt, output, threads, workers) -> None:
    """Classify image files and folders (recursive) with an exported ONNX model.

    Any image Pillow reads, any size or mode (converted to 32x32 RGB).  An
    unreadable file is reported on stderr and skipped; the exit code is then 1.
    """
    from cifar_edge.runtime.classifier import Classifier
    from cifar_edge.runtime.images import find_images
    from cifar_edge.runtime.infer import plan_threads, predict_files
    from cifar_edge.runtime.manifest import Manifest
    from cifar_edge.runtime.output import format_predictions

    try:
        files = find_images(paths)
    except FileNotFoundError as exc:
        raise BadInputError(f"no such file or folder: {exc}") from None
    if not files:
        raise BadInputError("no image files found in " + ", ".join(map(str, paths)))
    intra_op, parallel = plan_threads(threads, len(files), batch_size)
    classifier = Classifier(model, Manifest.load(manifest) if manifest else None, threads=intra_op)
    top_k = min(top_k, len(classifier.class_names))
    results = []
    for prediction in predict_files(classifier, files, batch_size=batch_size, top_k=top_k, workers=workers,
                                    parallel=parallel):
        if not prediction.ok:
            click.echo(f"skipped {prediction.path}: {prediction.error}", err=True)
        results.append(prediction)
    text = format_predictions(results, fmt, top_k)
    if output:
        from cifar_edge.runtime.files import write_text  # tempfile & co: only when writing a file

        write_text(output, text)
    else:
        click.echo(text, nl=False)
    failed = sum(not r.ok for r in results)
    click.echo(f"{len(results) - failed} classified, {failed} failed", err=True)
    if failed:
        sys.exit(EXIT_SOME_INPUTS_FAILED)


# --- evaluate / bench -----------------------------------------------------------------

@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Test set: " + _DATA_HELP + "  [default: the Keras CIFAR-10 download]")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Report folder.  [default: TARGET/eval-<data name>]")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N test images per class.")
@click.option("--keras/--no-keras", "use_keras", default=True, show_default=True,
              help="Include the source Keras model (needs TensorFlow).")
def evaluate(target, data, out, limit, use_keras) -> None:
    """Accuracy of Keras, ONNX fp32 and ONNX int8 side by side on a test set.

    Writes evaluation.json, evaluation.md (accuracy, agreement with Keras,
    per-class precision/recall/F1) and a confusion matrix PNG per model.
    TARGET is an export folder, its manifest.json, or an ONNX model beside one.
    """
    if use_keras:
        _import_tensorflow()
    try:
        from cifar_edge.evaluation import evaluate as run_evaluate
    except ImportError as exc:
        raise _need_train_extra(exc) from None
    run_evaluate(target, data, out=out, limit=limit, use_keras=use_keras, echo=click.echo)


def _int_list(value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if any(v < 1 for v in values):
        raise click.BadParameter("values must be at least 1")
    return values


def _thread_list(ctx, param, value):
    try:
        return [0 if v.strip() == "all" else int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("expected a comma-separated list of thread counts, e.g. 1,2 or 1,all") from None


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--threads", default="1,all", show_default=True, callback=_thread_list,
              help="Comma-separated intra-op thread counts ('all' = every core).")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(min=5), default=300, show_default=True,
              help="Timed batch-1 calls per model.")
@click.option("--batch-sizes", default="32,256", show_default=True, callback=lambda c, p, v: _int_list(v),
              help="Comma-separated batch sizes for the throughput test.")
@click.option("--batch-repeats", type=click.IntRange(min=1), default=60, show_default=True,
              help="Timed calls per model and batch size, split over the rounds.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Interleaved timing rounds (every model once per round); ratios are taken round by round.")
@click.option("--keras/--no-keras", "use_keras", default=True, show_default=True,
              help="Include the source Keras model (needs TensorFlow).")
@click.option("--tflite/--no-tflite", default=True, show_default=True,
              help="Include TFLite fp32/int8 baselines built from the Keras model (needs TensorFlow).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Also measure each model's accuracy on this test set. " + _DATA_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N test images per class.")
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Also time `infer` end to end over this folder, and the cold start.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Report folder.  [default: TARGET/bench]")
def bench(target, threads, warmup, repeats, batch_sizes, batch_repeats, rounds, use_keras, tflite, data, limit,
          images, out) -> None:
    """Latency (batch 1: p50/p90/p99), throughput, size and accuracy of every model, side by side.

    Keras, ONNX fp32 and ONNX int8, and as the baseline TFLite fp32 and
    int8 (XNNPACK) built from the same Keras model, with the ONNX-int8 /
    TFLite-int8 and ONNX-int8 / ONNX-fp32 ratios taken round by round.  Writes bench.json, bench.md and
    bench.png.  TARGET is an export folder, its manifest.json, or an ONNX
    model beside one.
    """
    try:
        from cifar_edge.benchmark import BenchConfig
        from cifar_edge.benchmark import bench as run_bench
    except ImportError as exc:
        raise _need_train_extra(exc) from None
    if use_keras or tflite:
        _import_tensorflow()
    config = BenchConfig(threads=threads, warmup=warmup, repeats=repeats, batch_sizes=batch_sizes,
                         batch_repeats=batch_repeats, rounds=rounds, use_keras=use_keras, tflite=tflite,
                         data=data, limit=limit, images=images)
    run_bench(target, config, out=out, echo=click.echo)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI, mapping errors to one line and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="cifar-edge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CifarEdgeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in _TRAIN_ONLY:
            err = _need_train_extra(exc)
            click.echo(f"error: {err}", err=True)
            sys.exit(err.code)
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            click.echo(f"error: cannot write output: {exc.strerror} ({exc.filename})", err=True)
            sys.exit(EXIT_WRITE_FAILED)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
