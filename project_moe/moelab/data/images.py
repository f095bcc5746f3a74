"""Image datasets as whole uint8 tensors (the batch loader is in loader.py).

Every dataset is decoded once into memory as uint8 (N, C, H, W) plus int64 labels (N,);
augmentation and normalisation run on whole batches on the device, so an epoch costs a few
gathers instead of N Python calls into a DataLoader.

Legend: N samples, B batch, C channels, H height, W width, P crop padding.

Sources (see load_dataset):
  mnist          data_dir/MNIST/raw/*-ubyte[.gz], else the copy shipped in moelab/assets/mnist/
  fashion-mnist  data_dir/FashionMNIST/raw/*-ubyte[.gz], else a torchvision download
  cifar10        data_dir/cifar-10-batches-py via torchvision
  folder:PATH    PATH/{train,test}/<class>/<image>, decoded once and cached
  python-stdlib, text:PATH   byte-level text for a language model (text.py)
  rotten-tomatoes, csv-text:PATH   labelled texts as bytes (labelled_text.py)
  tfidf:rotten-tomatoes, tfidf:csv-text:PATH   the same texts as a TF-IDF table (text_features.py)
  iris, wine, breast-cancer, diabetes, csv:PATH   tables (tables.py)
  tu:PATH   graphs in the TU Dortmund format (graphs.py)
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pathlib
import re
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..paths import PACKAGE_DIR, REPO_ROOT
from .types import DataError, Dataset, Split

DATASET_CHOICES = ("mnist", "fashion-mnist", "cifar10", "folder:PATH", "python-stdlib", "text:PATH", "csv-text:PATH",
                   "rotten-tomatoes", "tfidf:rotten-tomatoes", "tfidf:csv-text:PATH", "iris", "wine", "breast-cancer",
                   "diabetes", "csv:PATH", "tu:PATH")

# Module-level so that tests can point them at tiny fixtures instead of the real 60k images.
MNIST_ASSET_DIR = PACKAGE_DIR / "assets" / "mnist"
MNIST_MD5 = {  # md5 of the unpacked files, as published with the original dataset
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IDX_NAMES = tuple(MNIST_MD5)  # train images, train labels, test images, test labels
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# CIFAR-10's label order, which is also the sorted order of cifar10-jpeg's class folders
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
FOLDER_CACHE_VERSION = 1  # bump when the cached tensor layout changes
RESIZE_CHUNK = 4096  # images per chunk when resizing, to bound the temporary float copy


# ----------------------------------------------------------------------------------------------
# Locations

def resolve_data_dir(arg: str | None) -> pathlib.Path:
    """--data-dir if given, else $MOE_DATA_DIR, else <repo root>/data."""
    chosen = arg or os.environ.get("MOE_DATA_DIR") or REPO_ROOT / "data"
    return pathlib.Path(chosen).expanduser().absolute()


def cache_dir() -> pathlib.Path:
    """$MOE_CACHE_DIR, else ~/.cache/project_moe; not created here."""
    return pathlib.Path(os.environ.get("MOE_CACHE_DIR") or pathlib.Path.home() / ".cache" / "project_moe").expanduser()


def check_dataset_spec(name: str) -> None:
    """Fail fast on a bad --dataset value, before any loading; creates nothing."""
    if name in DATASET_CHOICES[:3] or name in ("python-stdlib", "rotten-tomatoes", "solubility"):
        return
    from .tables import check_table_spec, is_table_dataset  # tables (pandas) load only for a table
    if is_table_dataset(name):
        return check_table_spec(name)
    if name.startswith("superpixels:"):
        from .superpixels import check_superpixel_spec   # superpixels.py builds on this module's loaders
        return check_superpixel_spec(name)
    if name.startswith(("text:", "csv-text:", "tu:")):
        kind, _, path = name.partition(":")
        if not path:
            raise DataError(f"--dataset {kind}: needs a path, e.g. --dataset {kind}:/data/corpus")
        if not pathlib.Path(path).expanduser().exists():
            raise DataError(f"--dataset {name}: no such file or folder")
        return
    if not name.startswith("folder:"):
        raise DataError(f"unknown dataset {name!r}; --dataset must be one of {', '.join(DATASET_CHOICES)}")
    root = _folder_root(name)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; check the path in --dataset folder:PATH")
    missing = [sub for sub in ("train", "test") if not (root / sub).is_dir()]
    if missing:
        raise DataError(f"{root} has no {' or '.join(s + '/' for s in missing)} directory; "
                        f"--dataset folder:PATH needs PATH/train/<class>/* and PATH/test/<class>/* image trees")


def _folder_root(name: str) -> pathlib.Path:
    path = name[len("folder:"):]
    if not path:
        raise DataError("--dataset folder: needs a path, e.g. --dataset folder:/data/cifar10-jpeg")
    return pathlib.Path(path).expanduser().absolute()


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

def read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """Parse an IDX file (optionally gzip'd) whose header must carry `magic`; returns uint8 array."""
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path}: truncated: expected an IDX header, found {len(buf)} bytes; replace the file")
    found = int.from_bytes(buf[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number 0x{found:08x} (expected 0x{magic:08x}); "
                        f"the file is not an IDX {'image' if magic == IDX_IMAGES_MAGIC else 'label'} file, replace it")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated: expected {header} header bytes, found {len(buf)}; replace the file")
    dims = [int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "trailing data"
        raise DataError(f"{path}: {what}: expected {expected} bytes for dims {dims}, found {len(buf)}; replace the file")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: pathlib.Path) -> bytearray:
    # bytearray, not bytes: numpy views of it are writable, so torch.from_numpy does not warn.
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        return bytearray(path.read_bytes())
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({_short(err)}); replace the file") from err


def _find_idx_files(raw_dir: pathlib.Path) -> list[pathlib.Path] | None:
    """The four IDX files in raw_dir (plain preferred over .gz), or None if any is missing."""
    found = []
    for name in IDX_NAMES:
        candidates = [raw_dir / name, raw_dir / (name + ".gz")]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _load_idx_splits(files: list[pathlib.Path], num_classes: int) -> tuple[Split, Split]:
    """(train, test) from [train images, train labels, test images, test labels]."""
    splits = []
    for img_path, lab_path in (files[:2], files[2:]):
        images = read_idx(img_path, IDX_IMAGES_MAGIC)  # (N, H, W)
        labels = read_idx(lab_path, IDX_LABELS_MAGIC)  # (N,)
        if len(images) != len(labels):
            raise DataError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels; "
                            f"the files come from different datasets, replace them")
        if len(labels) and labels.max() >= num_classes:
            raise DataError(f"{lab_path}: label {labels.max()} out of range 0..{num_classes - 1}; replace the file")
        splits.append(Split(torch.from_numpy(images)[:, None],  # (N, 1, H, W)
                            torch.from_numpy(labels).long()))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------------------------
# MNIST: local copy, else the embedded copy, else torchvision

def _load_mnist(data_dir: pathlib.Path, download: bool) -> tuple[Split, Split, list[str], str]:
    raw_dir = data_dir / "MNIST" / "raw"
    cached_raw = cache_dir() / "MNIST" / "raw"
    for where in (raw_dir, cached_raw):
        files = _find_idx_files(where)
        if files:
            return (*_load_idx_splits(files, 10), MNIST_CLASSES, f"MNIST IDX files in {where}")
    if _find_idx_files(MNIST_ASSET_DIR):
        dest = _unpack_embedded_mnist([raw_dir, cached_raw])
        return (*_load_idx_splits(_find_idx_files(dest), 10), MNIST_CLASSES,
                f"embedded MNIST copy ({MNIST_ASSET_DIR}) unpacked to {dest}")
    reason = _torchvision_download("MNIST", data_dir, download)
    files = _find_idx_files(raw_dir)
    if files is None:
        raise DataError(f"MNIST not found: no IDX files in {raw_dir}, the embedded copy {MNIST_ASSET_DIR} is missing "
                        f"({reason}); restore project_moe/moelab/assets/mnist/*.gz or place the 4 original IDX files in {raw_dir}")
    return (*_load_idx_splits(files, 10), MNIST_CLASSES, f"MNIST downloaded by torchvision to {raw_dir}")


def _unpack_embedded_mnist(destinations: list[pathlib.Path]) -> pathlib.Path:
    """Unpack the shipped .gz files into the first writable destination; returns it."""
    errors = []
    for dest in destinations:
        try:
            for name in IDX_NAMES:
                if not (dest / name).is_file():
                    _gunzip_checked(MNIST_ASSET_DIR / (name + ".gz"), dest / name, MNIST_MD5[name])
            return dest
        except OSError as err:  # read-only data dir: fall back to the cache dir
            errors.append(f"{dest}: {_short(err)}")
    raise DataError(f"cannot unpack the embedded MNIST copy ({'; '.join(errors)}); "
                    f"pass a writable --data-dir or set MOE_CACHE_DIR to a writable directory")


def _gunzip_checked(src: pathlib.Path, dst: pathlib.Path, md5: str) -> None:
    # Write to a temp file and rename, so an interrupted or concurrent run never sees half a file.
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"{src} is corrupt: md5 of its content is {digest.hexdigest()}, expected {md5}; "
                            f"restore it from the repository (git checkout -- {src.name})")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _torchvision_download(cls_name: str, data_dir: pathlib.Path, download: bool) -> str:
    """Ask torchvision to fetch a dataset into data_dir; returns why it did not, or 'downloaded'."""
    if not download:
        return "download disabled"
    try:
        import torchvision
        getattr(torchvision.datasets, cls_name)(root=str(data_dir), train=True, download=True)
    except Exception as err:  # offline machines fail in many ways (URLError, socket, HTTP, md5)
        return f"download failed: {_short(err)}"
    return "downloaded"


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST and CIFAR-10

def _load_fashion_mnist(data_dir: pathlib.Path, download: bool) -> tuple[Split, Split, list[str], str]:
    raw_dir = data_dir / "FashionMNIST" / "raw"
    files = _find_idx_files(raw_dir)
    reason = ""
    if files is None:
        reason = _torchvision_download("FashionMNIST", data_dir, download)
        files = _find_idx_files(raw_dir)
    if files is None:
        raise DataError(f"Fashion-MNIST not found in {raw_dir} ({reason}); place the original IDX files "
                        f"{', '.join(IDX_NAMES)} (or their .gz) there, or run once with network access")
    return (*_load_idx_splits(files, 10), FASHION_CLASSES, f"Fashion-MNIST IDX files in {raw_dir}")


def _load_cifar10(data_dir: pathlib.Path, download: bool) -> tuple[Split, Split, list[str], str]:
    batches = data_dir / "cifar-10-batches-py"
    try:
        import torchvision
        parts = [torchvision.datasets.CIFAR10(root=str(data_dir), train=t, download=download) for t in (True, False)]
    except Exception as err:
        why = _short(err) if download else "download disabled"
        raise DataError(f"CIFAR-10 not found in {batches} ({why}); run once with network access, or use an "
                        f"ImageFolder copy with --dataset folder:PATH (PATH with train/<class>/ and test/<class>/)") from err
    splits = [Split(torch.from_numpy(np.ascontiguousarray(p.data)).permute(0, 3, 1, 2).contiguous(),  # (N, 3, 32, 32)
                    torch.as_tensor(p.targets, dtype=torch.int64)) for p in parts]
    return splits[0], splits[1], list(parts[0].classes), f"CIFAR-10 python batches in {batches}"


# ----------------------------------------------------------------------------------------------
# ImageFolder trees

def _load_folder(root: pathlib.Path, image_size: int | None) -> tuple[Split, Split, list[str], str]:
    classes = _folder_classes(root)
    listing = {sub: _list_images(root / sub, classes) for sub in ("train", "test")}
    key = _folder_cache_key(root, listing, image_size)
    cache_file = cache_dir() / f"folder-{key}.pt"
    cached = _read_cache(cache_file)
    if cached is not None and cached["classes"] == classes:
        return cached["train"], cached["test"], classes, f"{root} (decoded tensors cached in {cache_file})"
    all_files = listing["train"] + listing["test"]
    images = _decode_all([path for path, _, _ in all_files], image_size)
    labels = torch.tensor([label for _, label, _ in all_files], dtype=torch.int64)
    n_train = len(listing["train"])
    train, test = Split(images[:n_train], labels[:n_train]), Split(images[n_train:], labels[n_train:])
    _write_cache(cache_file, {"classes": classes, "train": train, "test": test})
    return train, test, classes, f"{root} (decoded {len(all_files)} images, cached in {cache_file})"


def _folder_classes(root: pathlib.Path) -> list[str]:
    def subdirs(d: pathlib.Path) -> list[str]:
        return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
    classes, test_classes = subdirs(root / "train"), subdirs(root / "test")
    if not classes:
        raise DataError(f"{root / 'train'} has no class subdirectories; expected train/<class>/<image> files")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has one class subdirectory ({classes[0]}); a classifier needs at least "
                        "two classes: add train/<class>/ directories")
    if classes != test_classes:
        diff = sorted(set(classes) ^ set(test_classes))
        raise DataError(f"{root}: train/ and test/ have different class subdirectories (differ in {diff}); "
                        f"make both contain the same class directories")
    return classes


def _list_images(split_dir: pathlib.Path, classes: list[str]) -> list[tuple[str, int, os.stat_result]]:
    """(path, label, stat) for every image under split_dir/<class>/, in a stable sorted order."""
    out = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [os.path.join(dirpath, f) for f in filenames
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found and split_dir.name == "train":
            raise DataError(f"{split_dir / cls} contains no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"add images or remove the directory")
        out += [(path, label, os.stat(path)) for path in sorted(found)]
    if not out:
        raise DataError(f"{split_dir} contains no images; expected {split_dir}/<class>/<image> files")
    return out


def _folder_cache_key(root: pathlib.Path, listing: dict, image_size: int | None) -> str:
    # Size and mtime of every file: any added, removed or rewritten image changes the key.
    h = hashlib.sha256(f"{FOLDER_CACHE_VERSION}\n{root}\n{image_size}\n".encode())
    prefix = len(str(root)) + 1  # every path was built by joining onto root; slicing beats relpath
    entries = sorted((path[prefix:], st.st_size, st.st_mtime_ns) for split in listing.values() for path, _, st in split)
    for rel, size, mtime in entries:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def _read_cache(path: pathlib.Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        return {"classes": blob["classes"], "train": Split(*blob["train"]), "test": Split(*blob["test"])}
    except Exception as err:  # a partial or stale cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable cache {path}: {_short(err)}")
        return None


def _write_cache(path: pathlib.Path, content: dict) -> None:
    blob = {"classes": content["classes"],
            "train": [content["train"].images, content["train"].labels],
            "test": [content["test"].images, content["test"].labels]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path)  # readers see the old file or the whole new one, never half
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as err:
        warnings.warn(f"cannot write decoded-image cache {path} ({_short(err)}); "
                      f"set MOE_CACHE_DIR to a writable directory")


def _decode_all(paths: list[str], image_size: int | None) -> torch.Tensor:
    """Decode every file into one uint8 (N, C, H, W) tensor; 1 channel only if all are grayscale."""
    # A plain loop: torchvision's decoders hold the GIL, so a thread pool measured no faster
    # (about 0.1 s per 1000 small JPEGs either way), and the result is cached anyway.
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders with a warning on every call; they still work.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        images = [_decode_sized(path, image_size) for path in paths]
    channels = 1 if all(img.shape[0] == 1 for img in images) else 3
    _check_same_size(images, paths)
    return torch.stack([img.expand(channels, -1, -1) for img in images])  # (N, C, H, W)


def _decode_sized(path: str, image_size: int | None) -> torch.Tensor:
    img = _decode_file(path)  # (1 or 3, H, W)
    if image_size is not None and tuple(img.shape[1:]) != (image_size, image_size):
        img = resize_images(img[None], image_size)[0]
    return img


def _decode_file(path: str) -> torch.Tensor:
    """One image as uint8 (1, H, W) if grayscale, else (3, H, W); DataError naming the file if unreadable."""
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:  # decoders removed from a later torchvision: PIL is about half as fast
        return _decode_with_pil(path)
    try:
        data = read_file(path)
        img = decode_image(data, mode=ImageReadMode.UNCHANGED)
        if img.shape[0] not in (1, 3):  # alpha or CMYK: let the decoder do the colour conversion
            img = decode_image(data, mode=ImageReadMode.GRAY if img.shape[0] == 2 else ImageReadMode.RGB)
        if img.dtype != torch.uint8:  # 16-bit PNG
            img = (img.to(torch.int32) >> 8).to(torch.uint8)
        return img
    except RuntimeError:
        return _decode_with_pil(path)  # BMP, TIFF, PPM: formats torchvision does not decode


def _decode_with_pil(path: str) -> torch.Tensor:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            arr = np.array(im)  # (H, W) or (H, W, 3)
    except Exception as err:
        raise DataError(f"cannot decode image {path} ({_short(err)}); delete or replace the file") from err
    t = torch.from_numpy(arr)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()  # (C, H, W)


def _check_same_size(images: list[torch.Tensor], paths: list[str]) -> None:
    first = tuple(images[0].shape[1:])
    for img, path in zip(images, paths):
        if tuple(img.shape[1:]) != first:
            raise DataError(f"images differ in size ({paths[0]} is {first[0]}x{first[1]}, {path} is "
                            f"{img.shape[1]}x{img.shape[2]}); pass --image-size N to resize all to N x N")


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased bilinear, in chunks."""
    out = []
    for chunk in images.split(RESIZE_CHUNK):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


# ----------------------------------------------------------------------------------------------
# Putting a dataset together

def load_dataset(name: str, data_dir: pathlib.Path, val_fraction: float = 0.1, seed: int = 0,
                 download: bool = True, image_size: int | None = None, context: int = 128, table=None):
    """Load train/test, carve a seeded validation split off train, compute train mean/std.
    Text datasets (text.py; ``context`` bytes per sequence) return a TextDataset for a language
    model, a Dataset of byte sequences for classification. Tables (tables.py) return a
    TableDataset cut by ``table`` (a TableOptions: target column, task, folds)."""
    check_dataset_spec(name)
    from .tables import TableOptions, is_table_dataset, load_table_dataset
    table = table or TableOptions()
    if name.startswith("tu:"):
        from .graphs import load_graph_dataset
        return load_graph_dataset(name, table.folds, table.fold, val_fraction, seed)
    if name.startswith("superpixels:"):
        from .superpixels import load_superpixel_dataset
        return load_superpixel_dataset(name, data_dir, val_fraction, seed, download)
    if name == "solubility":
        from .molecules import load_molecule_dataset
        return load_molecule_dataset(val_fraction, seed, table.task, table.target_bins)
    if name.startswith("tfidf:"):
        from .text_features import load_text_features
        return load_text_features(name, table, val_fraction, seed)
    if is_table_dataset(name):
        return load_table_dataset(name, table, val_fraction, seed)
    from .text import is_text_dataset, load_text_dataset  # text.py builds on this module's Split and Dataset
    if is_text_dataset(name):
        return load_text_dataset(name, context, val_fraction, seed, table.folds, table.fold)
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    name, full_train, test, classes, source = load_image_splits(name, data_dir, download, image_size)
    train, val = split_train_val(full_train, val_fraction, seed)
    mean, std = channel_stats(train.images)
    return Dataset(name=name, train=train, val=val, test=test, classes=classes, mean=mean, std=std,
                   augment=train.images.shape[1] == 3, source=source)


def load_image_splits(name: str, data_dir: pathlib.Path, download: bool = True,
                      image_size: int | None = None) -> tuple[str, Split, Split, list[str], str]:
    """(name with an absolute folder path, the whole training split, the test split, class names,
    where they were read) of an image dataset: mnist, fashion-mnist, cifar10 or folder:PATH."""
    if image_size is not None and image_size < 1:
        raise DataError(f"--image-size must be a positive integer, got {image_size}")
    data_dir = pathlib.Path(data_dir).expanduser().absolute()
    if name.startswith("folder:"):
        root = _folder_root(name)
        return (f"folder:{root}", *_load_folder(root, image_size))
    loader = {"mnist": _load_mnist, "fashion-mnist": _load_fashion_mnist, "cifar10": _load_cifar10}[name]
    full_train, test, classes, source = loader(data_dir, download)
    if image_size is not None and full_train.images.shape[-1] != image_size:
        full_train, test = (Split(resize_images(s.images, image_size), s.labels) for s in (full_train, test))
    return name, full_train, test, classes, source


def train_val_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices, a random disjoint cut of n rows fixed by seed, each in row order."""
    n_val = round(val_fraction * n)
    if n_val >= n:
        raise DataError(f"--val-fraction {val_fraction} leaves no training samples out of {n}; lower it")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values.numpy(), perm[:n_val].sort().values.numpy()


def split_train_val(split: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Random disjoint (train, val) fixed by seed; each keeps the original sample order."""
    train_idx, val_idx = (torch.from_numpy(rows) for rows in train_val_rows(len(split), val_fraction, seed))
    return (Split(split.images[train_idx], split.labels[train_idx]),
            Split(split.images[val_idx], split.labels[val_idx]))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 (N, C, H, W)."""
    # A 256-bin histogram per channel gives exact sums of x and x^2 about 10x faster than
    # reducing the strided (N, H, W) dims of a converted copy.
    hist = torch.stack([torch.bincount(images[:, c].reshape(-1), minlength=256)
                        for c in range(images.shape[1])]).double()  # (C, 256)
    values = torch.arange(256, dtype=torch.float64) / 255
    count = hist.sum(1)
    mean = (hist * values).sum(1) / count
    var = (hist * values * values).sum(1) / count - mean * mean
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())


def _short(err: BaseException) -> str:
    """An exception as a short single line, without C++ source locations."""
    text = " ".join(str(err).split()) or type(err).__name__
    return re.sub(r"^.*\.(?:cpp|h):\d+, ", "", text)[:200]
