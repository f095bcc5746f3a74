"""moelab/data/images.py on tiny datasets written in the real on-disk formats (IDX, ImageFolder)."""
import gzip
import hashlib
import os
import pathlib
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from synthetic import idx_bytes, numbered_split, sample_ids, write_folder

from moelab import data
from moelab.data import images
from moelab.training import launch


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    # Keep every test away from ~/.cache, the repo's data/ and the real 60k embedded MNIST.
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MOE_DATA_DIR", raising=False)
    monkeypatch.setattr(images, "MNIST_ASSET_DIR", tmp_path / "no-embedded-copy")


@pytest.fixture
def offline(monkeypatch):
    """Make every torchvision download fail the way it does without network; records the calls."""
    calls = []

    def refuse(cls_name):
        def fake(root, train=True, download=False, **kwargs):
            calls.append(cls_name)
            if download:
                raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        return fake

    for cls_name in ("MNIST", "FashionMNIST", "CIFAR10"):
        monkeypatch.setattr(torchvision.datasets, cls_name, refuse(cls_name))
    return calls


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str):
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


# ----------------------------------------------------------------------------------------------
# IDX fixtures


def make_idx_arrays(n_train=30, n_test=10, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_idx_dir(raw_dir: pathlib.Path, arrays: dict, gz: bool = False) -> dict[str, pathlib.Path]:
    raw_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, arr in arrays.items():
        path = raw_dir / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(idx_bytes(arr)) if gz else idx_bytes(arr))
        paths[name] = path
    return paths


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_layout_loads_raw_and_gz(tmp_path, gz):
    arrays = make_idx_arrays()
    write_idx_dir(tmp_path / "d" / "MNIST" / "raw", arrays, gz=gz)
    d = data.load_dataset("mnist", tmp_path / "d", val_fraction=0.2, download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (24, 6, 10)
    assert d.in_shape == (1, 28, 28) and d.num_classes == 10 and not d.augment
    assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
    assert torch.equal(d.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    all_train = torch.cat([d.train.images, d.val.images])[:, 0].flatten(1)  # (30, 784)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).flatten(1)
    assert sorted(map(tuple, all_train.tolist())) == sorted(map(tuple, expected.tolist()))


def test_fashion_mnist_gz_layout_loads(tmp_path, offline):
    arrays = make_idx_arrays(n_train=20, n_test=5)
    write_idx_dir(tmp_path / "FashionMNIST" / "raw", arrays, gz=True)
    d = data.load_dataset("fashion-mnist", tmp_path, val_fraction=0.0)
    assert d.classes[0] == "T-shirt/top" and len(d.classes) == 10
    assert torch.equal(d.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(d.train.labels, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    assert d.val.images.shape == (0, 1, 28, 28)
    assert offline == []  # files present: no download attempted


def embedded_fixture(tmp_path, monkeypatch, arrays) -> None:
    """A tiny stand-in for assets/mnist/*.gz, with its md5 table."""
    asset_dir = tmp_path / "assets"
    write_idx_dir(asset_dir, arrays, gz=True)
    md5 = {name: hashlib.md5(idx_bytes(arr)).hexdigest() for name, arr in arrays.items()}
    monkeypatch.setattr(images, "MNIST_ASSET_DIR", asset_dir)
    monkeypatch.setattr(images, "MNIST_MD5", md5)


def test_embedded_mnist_is_unpacked_into_data_dir(tmp_path, monkeypatch, offline):
    arrays = make_idx_arrays()
    embedded_fixture(tmp_path, monkeypatch, arrays)
    d = data.load_dataset("mnist", tmp_path / "d")
    raw = tmp_path / "d" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(arrays)  # no temp files left behind
    assert (raw / "t10k-images-idx3-ubyte").read_bytes() == idx_bytes(arrays["t10k-images-idx3-ubyte"])
    assert "embedded" in d.source and len(d.test) == 10
    assert offline == []


def test_embedded_mnist_goes_to_cache_dir_when_data_dir_is_unwritable(tmp_path, monkeypatch, offline):
    embedded_fixture(tmp_path, monkeypatch, make_idx_arrays())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a directory under a regular file cannot be created, even by root
    d = data.load_dataset("mnist", blocker / "data")
    assert (tmp_path / "cache" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert len(d.train) + len(d.val) == 30
    # The second load finds the cached copy instead of unpacking again.
    monkeypatch.setattr(images, "MNIST_ASSET_DIR", tmp_path / "gone")
    assert torch.equal(data.load_dataset("mnist", blocker / "data").test.images, d.test.images)


def test_embedded_mnist_md5_mismatch_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    embedded_fixture(tmp_path, monkeypatch, make_idx_arrays())
    monkeypatch.setitem(images.MNIST_MD5, "train-images-idx3-ubyte", "0" * 32)
    with pytest.raises(data.DataError) as err:
        data.load_dataset("mnist", tmp_path / "d")
    assert_one_line(err, "train-images-idx3-ubyte.gz", "md5")
    assert list((tmp_path / "d" / "MNIST" / "raw").iterdir()) == []


def test_mnist_missing_everywhere_offline(tmp_path, offline):
    with pytest.raises(data.DataError) as err:
        data.load_dataset("mnist", tmp_path / "d")
    assert_one_line(err, str(tmp_path / "d" / "MNIST" / "raw"), "assets/mnist")
    assert offline == ["MNIST"]


def corrupt_wrong_magic(paths, arrays):
    arr = arrays["train-images-idx3-ubyte"]
    paths["train-images-idx3-ubyte"].write_bytes(idx_bytes(arr, magic=0x00000804))
    return "train-images-idx3-ubyte", "wrong magic number 0x00000804 (expected 0x00000803)"


def corrupt_truncated(paths, arrays):
    path = paths["t10k-images-idx3-ubyte"]
    path.write_bytes(path.read_bytes()[:-5])
    full = 16 + 10 * 28 * 28
    return "t10k-images-idx3-ubyte", f"truncated: expected {full} bytes for dims [10, 28, 28], found {full - 5}"


def corrupt_trailing(paths, arrays):
    path = paths["train-labels-idx1-ubyte"]
    path.write_bytes(path.read_bytes() + b"\0")
    return "train-labels-idx1-ubyte", "trailing data"


def corrupt_count_mismatch(paths, arrays):
    paths["train-labels-idx1-ubyte"].write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"][:29]))
    return "train-labels-idx1-ubyte", "30 images but"


def corrupt_label_range(paths, arrays):
    paths["t10k-labels-idx1-ubyte"].write_bytes(idx_bytes(np.full(10, 12, np.uint8)))
    return "t10k-labels-idx1-ubyte", "label 12 out of range"


@pytest.mark.parametrize("corrupt", [corrupt_wrong_magic, corrupt_truncated, corrupt_trailing,
                                     corrupt_count_mismatch, corrupt_label_range])
def test_bad_idx_files_name_the_file_and_the_problem(tmp_path, corrupt):
    arrays = make_idx_arrays()
    paths = write_idx_dir(tmp_path / "FashionMNIST" / "raw", arrays)
    file_name, problem = corrupt(paths, arrays)
    with pytest.raises(data.DataError) as err:
        data.load_dataset("fashion-mnist", tmp_path, download=False)
    assert_one_line(err, file_name, problem)


def test_corrupt_gz_is_reported(tmp_path):
    paths = write_idx_dir(tmp_path / "FashionMNIST" / "raw", make_idx_arrays(), gz=True)
    paths["t10k-labels-idx1-ubyte"].write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(data.DataError) as err:
        data.load_dataset("fashion-mnist", tmp_path, download=False)
    assert_one_line(err, "t10k-labels-idx1-ubyte.gz", "cannot read")


def test_fashion_mnist_absent_offline_says_where_and_how(tmp_path, offline):
    with pytest.raises(data.DataError) as err:
        data.load_dataset("fashion-mnist", tmp_path)
    raw = str(tmp_path / "FashionMNIST" / "raw")
    assert_one_line(err, raw, "train-images-idx3-ubyte", "network", "download failed")
    assert offline == ["FashionMNIST"]
    with pytest.raises(data.DataError) as err:
        data.load_dataset("fashion-mnist", tmp_path, download=False)
    assert_one_line(err, raw, "download disabled")
    assert offline == ["FashionMNIST"]  # download=False never calls torchvision


def test_fashion_mnist_downloaded_by_torchvision_is_used(tmp_path, monkeypatch):
    arrays = make_idx_arrays(n_train=10, n_test=4)

    def fake_download(root, train=True, download=False):
        write_idx_dir(pathlib.Path(root) / "FashionMNIST" / "raw", arrays)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    d = data.load_dataset("fashion-mnist", tmp_path, val_fraction=0.0)
    assert torch.equal(d.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))


def test_cifar10_arrays_are_converted_to_nchw(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)

    class FakeCIFAR10:
        classes = ["airplane", "automobile"]

        def __init__(self, root, train, download):
            n = 12 if train else 4
            self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # NHWC, as torchvision stores it
            self.targets = [i % 2 for i in range(n)]
            made.append(self)

    made = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    d = data.load_dataset("cifar10", tmp_path, val_fraction=0.0)
    assert d.in_shape == (3, 32, 32) and d.augment and d.classes == ["airplane", "automobile"]
    assert torch.equal(d.test.images, torch.from_numpy(made[1].data).permute(0, 3, 1, 2))
    assert d.train.labels.tolist() == made[0].targets


def test_cifar10_absent_offline_suggests_folder(tmp_path, offline):
    with pytest.raises(data.DataError) as err:
        data.load_dataset("cifar10", tmp_path)
    assert_one_line(err, str(tmp_path / "cifar-10-batches-py"), "--dataset folder:PATH")


# ----------------------------------------------------------------------------------------------
# ImageFolder fixtures


def as_nchw(arrays: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays))
    return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)


def test_folder_png_rgb_is_exact(tmp_path):
    written = write_folder(tmp_path / "f", {"cat": 3, "dog": 2})
    d = data.load_dataset(f"folder:{tmp_path / 'f'}", tmp_path, val_fraction=0.0)
    assert d.name == f"folder:{tmp_path / 'f'}" and d.classes == ["cat", "dog"]
    assert d.in_shape == (3, 8, 8) and d.augment
    assert torch.equal(d.train.images, as_nchw(written["train"]))
    assert torch.equal(d.test.images, as_nchw(written["test"]))
    assert d.train.labels.tolist() == [0, 0, 0, 1, 1]


def test_folder_grayscale_png_and_jpeg_give_one_channel(tmp_path):
    root = tmp_path / "f"
    written = write_folder(root, {"a": 2, "b": 2}, mode="L")
    write_folder(root, {"a": 1}, fmt="jpg", mode="L", seed=1)  # joins class a in both splits
    d = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0)
    assert d.in_shape == (1, 8, 8) and not d.augment
    assert len(d.train) == 5
    # Sorted paths: a/000.jpg, a/000.png, a/001.png, b/000.png, b/001.png.
    assert torch.equal(d.train.images[1:], as_nchw(written["train"]))


def test_folder_mixed_gray_and_rgb_gives_three_channels(tmp_path):
    root = tmp_path / "f"
    gray = write_folder(root, {"a": 2}, mode="L")
    write_folder(root, {"b": 2}, mode="RGB")
    d = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0)
    assert d.in_shape == (3, 8, 8)
    assert torch.equal(d.train.images[:2], as_nchw(gray["train"]).expand(-1, 3, -1, -1))


def test_folder_jpeg_matches_pil_decoding(tmp_path):
    root = tmp_path / "f"
    write_folder(root, {"a": 3, "b": 3}, fmt="jpg", size=16)
    d = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0)
    paths = sorted((root / "test").rglob("*.jpg"))
    reference = as_nchw([np.array(Image.open(p)) for p in paths]).float()
    assert d.test.images.shape == (6, 3, 16, 16)
    assert (d.test.images.float() - reference).abs().mean() < 2  # decoders may differ by rounding


def test_folder_second_load_comes_from_cache(tmp_path, monkeypatch):
    root = tmp_path / "f"
    write_folder(root, {"a": 2, "b": 2}, fmt="jpg")
    first = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.25)
    assert len(list((tmp_path / "cache").glob("folder-*.pt"))) == 1

    def must_not_decode(path):
        raise AssertionError(f"decoded {path} despite a valid cache")

    monkeypatch.setattr(images, "_decode_file", must_not_decode)
    second = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.25)
    for a, b in [(first.train, second.train), (first.val, second.val), (first.test, second.test)]:
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert "cached" in second.source


def test_folder_cache_is_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    root = tmp_path / "f"
    write_folder(root, {"a": 2, "b": 2})
    data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0)
    changed = root / "test" / "b" / "001.png"
    new = np.full((8, 8, 3), 7, np.uint8)
    Image.fromarray(new).save(changed)
    os.utime(changed, ns=(10**18, 10**18))  # an mtime no earlier write could have had
    decoded = []
    real_decode = images._decode_file
    monkeypatch.setattr(images, "_decode_file", lambda p: decoded.append(p) or real_decode(p))
    d = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0)
    assert len(decoded) == 8
    assert torch.equal(d.test.images[-1], torch.full((3, 8, 8), 7, dtype=torch.uint8))


def test_folder_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "f"
    written = write_folder(root, {"a": 2, "b": 2})
    data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0)
    (cache_file,) = (tmp_path / "cache").glob("folder-*.pt")
    cache_file.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="ignoring unreadable cache"):
        d = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0)
    assert torch.equal(d.test.images, as_nchw(written["test"]))
    assert data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0).source.endswith(f"cached in {cache_file})")


def test_folder_unreadable_image_is_named(tmp_path):
    root = tmp_path / "f"
    write_folder(root, {"a": 2, "b": 2})
    (root / "train" / "b" / "broken.png").write_bytes(b"definitely not a PNG")
    with pytest.raises(data.DataError) as err:
        data.load_dataset(f"folder:{root}", tmp_path)
    assert_one_line(err, str(root / "train" / "b" / "broken.png"))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.pt"))


def test_folder_truncated_jpeg_is_named(tmp_path):
    root = tmp_path / "f"
    write_folder(root, {"a": 2, "b": 2}, fmt="jpg", size=32)
    bad = root / "test" / "a" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(data.DataError) as err:
        data.load_dataset(f"folder:{root}", tmp_path)
    assert_one_line(err, str(bad))


def test_folder_without_test_dir_fails_fast_and_creates_nothing(tmp_path):
    root = tmp_path / "f"
    write_folder(root, {"a": 1}, splits=("train",))
    with pytest.raises(data.DataError) as err:
        data.check_dataset_spec(f"folder:{root}")
    assert_one_line(err, str(root), "test/")
    with pytest.raises(data.DataError):
        data.load_dataset(f"folder:{root}", tmp_path / "d")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "d").exists()


def test_folder_with_different_classes_in_test_is_rejected(tmp_path):
    root = tmp_path / "f"
    write_folder(root, {"a": 1, "b": 1}, splits=("train",))
    write_folder(root, {"a": 1, "c": 1}, splits=("test",))
    with pytest.raises(data.DataError) as err:
        data.load_dataset(f"folder:{root}", tmp_path)
    assert_one_line(err, "different class", "'b'", "'c'")


@pytest.mark.parametrize("train_classes, test_classes, says", [
    ({"a": 2}, {"a": 1}, "at least two classes"),
    ({"a": 2, "b": 0}, {"a": 1, "b": 1}, "contains no images"),
    ({"a": 2, "b": 2}, {"a": 1, "b": 1, "c": 1}, "different class"),
])
def test_folder_that_makes_no_classification_task_is_refused_before_anything_is_written(
        tmp_path, capsys, monkeypatch, train_classes, test_classes, says):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "f"
    write_folder(root, train_classes, splits=("train",))
    write_folder(root, test_classes, splits=("test",))
    code = launch.main(["--dataset", f"folder:{root}", "--out", str(tmp_path / "runs"), "--epochs", "1"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and says in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_folder_images_of_different_sizes_need_image_size(tmp_path):
    root = tmp_path / "f"
    write_folder(root, {"a": 2}, size=8)
    write_folder(root, {"b": 2}, size=12)
    with pytest.raises(data.DataError) as err:
        data.load_dataset(f"folder:{root}", tmp_path)
    assert_one_line(err, "--image-size", "8x8", "12x12")
    d = data.load_dataset(f"folder:{root}", tmp_path, val_fraction=0.0, image_size=10)
    assert d.train.images.shape == (4, 3, 10, 10) and d.test.images.shape == (4, 3, 10, 10)


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.check_dataset_spec(f"folder:{tmp_path / 'nowhere'}")
    assert_one_line(err, str(tmp_path / "nowhere"), "does not exist")


@pytest.mark.parametrize("name", ["imagenet", "MNIST", "folder:", "cifar"])
def test_unknown_dataset_lists_the_choices(name):
    with pytest.raises(data.DataError) as err:
        data.check_dataset_spec(name)
    assert_one_line(err, "folder:")
    if name != "folder:":
        assert_one_line(err, "mnist, fashion-mnist, cifar10, folder:PATH")


def test_resolve_data_dir(tmp_path, monkeypatch):
    assert data.resolve_data_dir(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.setenv("MOE_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(None) == tmp_path / "env"
    assert data.resolve_data_dir(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("MOE_DATA_DIR")
    assert data.resolve_data_dir(None) == pathlib.Path(__file__).resolve().parent.parent.parent / "data"   # the repository root


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_val_fraction_out_of_range(tmp_path, fraction):
    with pytest.raises(data.DataError) as err:
        data.load_dataset("mnist", tmp_path, val_fraction=fraction)
    assert_one_line(err, "--val-fraction")


# ----------------------------------------------------------------------------------------------
# Validation split and statistics


def test_val_split_is_disjoint_and_fixed_by_seed():
    full = numbered_split(100)
    train, val = data.split_train_val(full, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert set(sample_ids(train.images)).isdisjoint(sample_ids(val.images))
    assert set(sample_ids(train.images)) | set(sample_ids(val.images)) == set(range(100))
    assert torch.equal(data.split_train_val(full, 0.2, seed=3)[1].images, val.images)
    assert not torch.equal(data.split_train_val(full, 0.2, seed=4)[1].images, val.images)


def test_dataset_stats_come_from_train_without_val(tmp_path):
    write_idx_dir(tmp_path / "MNIST" / "raw", make_idx_arrays(n_train=40))
    d = data.load_dataset("mnist", tmp_path, val_fraction=0.25, seed=1)
    x = d.train.images.double() / 255
    assert d.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    assert d.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)


def test_channel_stats_per_channel():
    images = torch.randint(0, 256, (50, 3, 5, 6), dtype=torch.uint8)
    mean, std = data.channel_stats(images)
    ref = images.double().div(255).transpose(0, 1).reshape(3, -1)  # (C, N*H*W)
    assert mean == pytest.approx(ref.mean(1).tolist()) and std == pytest.approx(ref.std(1, unbiased=False).tolist())
