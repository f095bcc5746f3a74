"""Labelled texts as a table of TF-IDF features: what a mixture of MLP experts (Jacobs et al.'s
mixture, here on text) and the scikit-learn references read, on the same splits as the byte-level
transformer classifier (labelled_text.py).

  --dataset tfidf:rotten-tomatoes | tfidf:csv-text:PATH

Why not bytes: on a few thousand short texts a byte-level transformer has to learn spelling before
sentiment; word n-gram weights hand every model the words at once, which is what a practitioner's
first model (a logistic regression on TF-IDF) starts from, so the mixtures are compared with it on
equal footing.

Features (fitted on the training texts alone, as every statistic of a table is): word unigrams and
bigrams, lower-cased, with scikit-learn's token pattern; the TFIDF_FEATURES most frequent among
those that occur in at least two training texts; sublinear term frequency times smoothed inverse
document frequency; every row scaled to unit L2 norm. The columns are *not* standardised: a rare
n-gram's weight would grow with its rarity.

Legend: N texts, F features.
"""
from __future__ import annotations

import numpy as np
import torch

from .labelled_text import is_classification_text, read_labelled_texts
from .tables import TableDataset, TableOptions, TableSplit
from .types import DataError

PREFIX = "tfidf:"
TFIDF_FEATURES = 8192
PLANE_ITERATIONS = 12        # subspace iterations for the principal plane of a wide feature matrix


def is_text_features(name: str) -> bool:
    return name.startswith(PREFIX)


def check_text_features_spec(name: str) -> None:
    inner = name[len(PREFIX):]
    if not is_classification_text(inner) or inner == "csv-text:":
        raise DataError(f"--dataset {name}: tfidf: takes labelled texts, e.g. --dataset tfidf:rotten-tomatoes or "
                        "tfidf:csv-text:/data/ag_news")


def principal_plane(features, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and two leading principal directions (2, F) of an (N, F) matrix, dense or
    scipy-sparse, by subspace iteration from a fixed start: the centring is applied to the
    products, never to the matrix, so a sparse one stays sparse and an exact SVD of thousands
    of columns is not needed."""
    mean = np.asarray(features.mean(axis=0), dtype=np.float64).ravel()          # (F,)

    def centred_times(basis: np.ndarray) -> np.ndarray:                          # (F, k) -> (N, k)
        return features @ basis - mean @ basis

    def centred_t_times(block: np.ndarray) -> np.ndarray:                        # (N, k) -> (F, k)
        return features.T @ block - np.outer(mean, block.sum(axis=0))
    basis = np.random.default_rng(seed).standard_normal((features.shape[1], 8))  # (F, 8): 6 spare directions
    for _ in range(PLANE_ITERATIONS):
        basis, _ = np.linalg.qr(centred_t_times(centred_times(basis)))
    _, _, vt = np.linalg.svd(centred_times(basis), full_matrices=False)         # rotate within the subspace
    return mean, (basis @ vt.T)[:, :2].T                                        # (2, F)


def load_text_features(name: str, options: TableOptions, val_fraction: float, seed: int) -> TableDataset:
    """The TF-IDF table of the labelled texts ``name[len('tfidf:'):]`` (classification)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    check_text_features_spec(name)
    texts = read_labelled_texts(name[len(PREFIX):], val_fraction, seed, options.folds, options.fold)
    if len(texts.val) == 0:
        raise DataError(f"--val-fraction {val_fraction} leaves no validation texts of {name}; give a value above 0")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=TFIDF_FEATURES, sublinear_tf=True,
                                 dtype=np.float32)
    try:
        train = vectorizer.fit_transform(texts.train.texts)
    except ValueError:          # no n-gram occurs twice: nothing to learn from
        raise DataError(f"--dataset {name}: no word occurs in two training texts; a TF-IDF table needs more "
                        "(or longer) texts") from None

    def split(part) -> TableSplit:
        matrix = train if part is texts.train else vectorizer.transform(part.texts)
        return TableSplit(torch.from_numpy(matrix.toarray()), torch.from_numpy(part.labels),
                          torch.from_numpy(part.rows))
    splits = {part: split(getattr(texts, part)) for part in ("train", "val", "test")}
    pca_mean, pca_components = principal_plane(train.astype(np.float64))
    return TableDataset(name=name, **splits, task="classification", classes=texts.classes,
                        feature_names=vectorizer.get_feature_names_out().tolist(),
                        source=f"{texts.source}; TF-IDF of word 1-2-grams, {len(vectorizer.vocabulary_)} features "
                               "fitted on the training texts",
                        folds=options.folds, fold=options.fold, target_name="label", pca_mean=pca_mean,
                        pca_components=pca_components)
