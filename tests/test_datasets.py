"""cifar_edge.datasets: every --data form, read from the real data."""

from __future__ import annotations

import pickle
import shutil
import tarfile

import numpy as np
import pytest
from conftest import (
    CIFAR10_CLASSES,
    EXACT_TEST_IMAGES,
    EXACT_TRAIN_IMAGES,
    FIRST_TEST_LABELS,
    make_cifar_tarball,
)

from cifar_edge.datasets import first_per_class, load_dataset
from cifar_edge.errors import BadInputError
from cifar_edge.runtime.images import load_image


def _raw_batch(path):
    """The batch as the CIFAR-10 web page documents it: rows of 1024 R, 1024 G, 1024 B."""
    with open(path, "rb") as fh:
        obj = pickle.load(fh, encoding="bytes")
    return np.asarray(obj[b"data"], dtype=np.uint8), np.asarray(obj[b"labels"])


@pytest.fixture(scope="module")
def exact(batches_dir):
    return load_dataset(batches_dir)


# --- cifar-10-batches-py -------------------------------------------------------------

def test_batches_folder_shapes_dtypes_labels(exact, batches_dir):
    train, test = exact.split("train"), exact.split("test")
    assert train.images.shape == (EXACT_TRAIN_IMAGES, 32, 32, 3)
    assert test.images.shape == (EXACT_TEST_IMAGES, 32, 32, 3)
    assert train.images.dtype == np.uint8 and test.images.dtype == np.uint8
    assert train.labels.shape == (EXACT_TRAIN_IMAGES,) and test.labels.shape == (EXACT_TEST_IMAGES,)
    assert np.issubdtype(test.labels.dtype, np.integer)
    assert test.labels[:10].tolist() == FIRST_TEST_LABELS
    assert set(np.unique(train.labels)) == set(range(10))
    assert exact.class_names == CIFAR10_CLASSES
    assert len(train) == EXACT_TRAIN_IMAGES


def test_batches_pixel_layout_matches_raw_rows(exact, batches_dir):
    """Row = 1024 red, 1024 green, 1024 blue values, each row-major 32x32 -> HWC."""
    rows, labels = _raw_batch(batches_dir / "test_batch")
    images = exact.split("test").images
    np.testing.assert_array_equal(images[0, :, :, 0].ravel(), rows[0, :1024])
    np.testing.assert_array_equal(images[5, :, :, 1].ravel(), rows[5, 1024:2048])
    np.testing.assert_array_equal(images[999, :, :, 2].ravel(), rows[999, 2048:])
    np.testing.assert_array_equal(exact.split("test").labels, labels)


def test_batches_images_match_the_jpeg_copies(exact, jpeg_dir):
    """The k-th test image of a class is test/<class>/<k>.jpg (JPEG-compressed), so the
    batch decoding (channel order, no transpose) must be close to the JPEG decoding."""
    test = exact.split("test")
    for i in range(6):
        label = int(test.labels[i])
        k = int((test.labels[:i] == label).sum())
        jpeg = load_image(jpeg_dir / "test" / CIFAR10_CLASSES[label] / f"{k:04d}.jpg").astype(int)
        x = test.images[i].astype(int)
        err = np.abs(jpeg - x).mean()
        assert err < 10, (i, err)
        assert err < np.abs(jpeg - x[..., ::-1]).mean()  # not BGR
        assert err < np.abs(jpeg - x.transpose(1, 0, 2)).mean()  # not transposed


def test_parent_of_batches_folder(exact, exact_subset_dir):
    ds = load_dataset(exact_subset_dir)
    assert ds.class_names == CIFAR10_CLASSES
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.split(split).images, exact.split(split).images)
        np.testing.assert_array_equal(ds.split(split).labels, exact.split(split).labels)


def test_only_requested_split_is_loaded(batches_dir):
    ds = load_dataset(batches_dir, splits=("test",))
    assert list(ds.splits) == ["test"]
    with pytest.raises(BadInputError, match="no train split"):
        ds.split("train")


def test_unknown_split_name_is_rejected(batches_dir):
    with pytest.raises(ValueError, match="validation"):
        load_dataset(batches_dir, splits=("validation",))


def test_train_batches_concatenate_in_numeric_order(batches_dir, tmp_path):
    """data_batch_2 .. data_batch_10 sort numerically, not as strings."""
    rows, labels = _raw_batch(batches_dir / "data_batch_1")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    shutil.copy(batches_dir / "batches.meta", folder)
    # Batch n holds images [k*(n-1), k*n) of the real batch, k = 7.
    for n in (1, 2, 10):
        start = 7 * (n - 1)
        blob = {b"data": rows[start:start + 7], b"labels": labels[start:start + 7].tolist()}
        (folder / f"data_batch_{n}").write_bytes(pickle.dumps(blob))
    ds = load_dataset(tmp_path, splits=("train",))
    expected = np.concatenate([labels[0:7], labels[7:14], labels[63:70]])
    np.testing.assert_array_equal(ds.split("train").labels, expected)


# --- tar.gz --------------------------------------------------------------------------

def test_tarball_equals_folder(exact, cifar_tarball):
    with tarfile.open(cifar_tarball) as tar:
        assert "cifar-10-batches-py/test_batch" in tar.getnames()
    ds = load_dataset(cifar_tarball)
    assert ds.class_names == CIFAR10_CLASSES
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.split(split).images, exact.split(split).images)
        np.testing.assert_array_equal(ds.split(split).labels, exact.split(split).labels)
    assert ds.split("test").labels[:10].tolist() == FIRST_TEST_LABELS


def test_tarball_with_limit(cifar_tarball, exact):
    ds = load_dataset(cifar_tarball, splits=("test",), limit_per_class=3)
    labels = exact.split("test").labels
    expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(10)]))
    np.testing.assert_array_equal(ds.split("test").images, exact.split("test").images[expected])


# --- image folders -----------------------------------------------------------------------

def test_image_folder_tree(jpeg_dir):
    ds = load_dataset(jpeg_dir, limit_per_class=3)
    assert ds.class_names == CIFAR10_CLASSES
    for split in ("train", "test"):
        s = ds.split(split)
        assert s.images.shape == (30, 32, 32, 3) and s.images.dtype == np.uint8
        assert s.labels.tolist() == [c for c in range(10) for _ in range(3)]
        # --limit keeps the first N files (by name) of each class folder
        np.testing.assert_array_equal(s.images[3], load_image(jpeg_dir / split / "automobile" / "0000.jpg"))
        np.testing.assert_array_equal(s.images[29], load_image(jpeg_dir / split / "truck" / "0002.jpg"))
    # train and test really are different folders
    assert not np.array_equal(ds.split("train").images, ds.split("test").images)


def test_single_folder_of_class_folders_serves_any_split(jpeg_dir):
    ds = load_dataset(jpeg_dir / "test", limit_per_class=2)
    assert ds.class_names == CIFAR10_CLASSES
    test, train = ds.split("test"), ds.split("train")
    assert test.images.shape == (20, 32, 32, 3)
    assert test.labels.tolist() == [c for c in range(10) for _ in range(2)]
    np.testing.assert_array_equal(train.images, test.images)
    np.testing.assert_array_equal(test.images[1], load_image(jpeg_dir / "test" / "airplane" / "0001.jpg"))


def test_single_folder_uses_its_own_class_names(jpeg_dir, tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
    shutil.copy(jpeg_dir / "test" / "cat" / "0000.jpg", tmp_path / "cats" / "a.jpg")
    shutil.copy(jpeg_dir / "test" / "dog" / "0000.jpg", tmp_path / "dogs" / "b.jpg")
    shutil.copy(jpeg_dir / "test" / "dog" / "0001.jpg", tmp_path / "dogs" / "c.jpg")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path, splits=("test",))
    assert ds.class_names == ["cats", "dogs"]
    assert ds.split("test").labels.tolist() == [0, 1, 1]


# --- --limit semantics -----------------------------------------------------------------

def test_batches_limit_first_n_per_class(batches_dir, exact):
    ds = load_dataset(batches_dir, limit_per_class=5)
    for split, n_total in (("train", EXACT_TRAIN_IMAGES), ("test", EXACT_TEST_IMAGES)):
        full = exact.split(split)
        idx = np.sort(np.concatenate([np.flatnonzero(full.labels == c)[:5] for c in range(10)]))
        got = ds.split(split)
        assert len(got) == 50 < n_total
        np.testing.assert_array_equal(got.labels, full.labels[idx])
        np.testing.assert_array_equal(got.images, full.images[idx])
        assert np.bincount(got.labels).tolist() == [5] * 10


def test_first_per_class():
    labels = np.array([2, 0, 2, 1, 0, 2, 0, 1])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 3, 4, 7]
    assert first_per_class(labels, 1).tolist() == [0, 1, 3]
    assert first_per_class(labels, None).tolist() == list(range(8))
    assert first_per_class(labels, 100).tolist() == list(range(8))


# --- bad inputs -------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-data"
    with pytest.raises(BadInputError, match="data not found") as info:
        load_dataset(missing)
    assert str(missing) in str(info.value)


def test_corrupt_batch(batches_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(batches_dir, folder)
    (folder / "test_batch").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(BadInputError) as info:
        load_dataset(folder, splits=("test",))
    message = str(info.value)
    assert "test_batch" in message and "not a readable CIFAR batch" in message
    assert "\n" not in message


def test_batch_with_wrong_row_size(batches_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    blob = {b"data": np.zeros((4, 1000), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(blob))
    with pytest.raises(BadInputError, match=r"test_batch.*\(N, 3072\).*\(4, 1000\)"):
        load_dataset(folder, splits=("test",))


def test_corrupt_tarball(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + np.random.default_rng(1).bytes(2000))
    with pytest.raises(BadInputError, match="not a readable CIFAR-10 archive") as info:
        load_dataset(bad)
    assert str(bad) in str(info.value)


def test_tarball_without_batches(tmp_path):
    readme = tmp_path / "readme.txt"
    readme.write_text("hello")
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(readme, arcname="stuff/readme.txt")
    with pytest.raises(BadInputError, match="holds no CIFAR-10 batches"):
        load_dataset(archive)


def test_tarball_with_corrupt_batch(batches_dir, tmp_path):
    folder = tmp_path / "src"
    shutil.copytree(batches_dir, folder)
    (folder / "data_batch_1").write_bytes(b"garbage" * 100)
    archive = make_cifar_tarball(folder, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(BadInputError, match="data_batch_1 is not a readable CIFAR batch"):
        load_dataset(archive, splits=("train",))


def test_folder_that_is_not_cifar(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(BadInputError, match="is not a CIFAR-10 data folder"):
        load_dataset(tmp_path)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("x")
    with pytest.raises(BadInputError, match="holds no images in class folders"):
        load_dataset(tmp_path)


def test_unreadable_image_in_class_folder(jpeg_dir, tmp_path):
    (tmp_path / "cat").mkdir()
    shutil.copy(jpeg_dir / "test" / "cat" / "0000.jpg", tmp_path / "cat" / "0000.jpg")
    (tmp_path / "cat" / "0001.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(BadInputError, match="unreadable"):
        load_dataset(tmp_path, splits=("test",))
