import bz2
import csv
import hashlib
import io
import json
import re

import numpy as np
import pytest
import torch
from runs import TINY
from synthetic import AG_TRAIN, write_ag_news

from moelab import data
from moelab.data import labelled_text, text, text_features
from moelab.data.tables import TableOptions
from moelab.data.types import DataError
from moelab.training import launch
from moelab.training.config import ConfigError, parse_args, validate
from moelab.training.exits import EXIT_BAD_INPUT


def one_line(error) -> bool:
    message = str(error.value if hasattr(error, "value") else error).strip()
    return bool(message) and "\n" not in message


# ----------------------------------------------------------------------------- classification layouts


def test_ag_news_layout_loads_quoted_fields_as_truncated_and_padded_bytes(tmp_path):
    write_ag_news(tmp_path / "ag")
    data = labelled_text.load_classification_dataset(f"csv-text:{tmp_path / 'ag'}", 40, 0.25, seed=0)
    assert data.classes == ["1", "2", "3", "4"] and data.mean is None and not data.augment
    assert data.test.labels.tolist() == [1, 3, 0] and data.test.labels.dtype == torch.int64
    assert data.test.images.shape == (3, 40) and data.test.images.dtype == torch.uint8
    assert bytes(data.test.images[0].tolist()) == b"Match Drawn, 1-1." + bytes(40 - 17)      # padded with 0
    assert bytes(data.test.images[2].tolist()) == b"Summit No deal." + bytes(40 - 15)
    assert len(data.train) + len(data.val) == 12 and len(data.val) == 3
    expected = {}
    for row in csv.reader(io.StringIO(AG_TRAIN)):
        joined = f"{row[1]} {row[2]}".encode("utf-8")
        expected[joined[:40]] = int(row[0]) - 1
    assert len(expected) == 4
    seen = torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels])
    for image, label in zip(*seen):
        assert expected[bytes(image.tolist()).rstrip(b"\x00")] == int(label)
    quoted = b'Talks, again Leaders met on Monday, "briefly", and left.'[:40]
    assert quoted in expected and len(quoted) == 40                        # commas and quotes kept, truncated
    assert labelled_text.encode_texts(["caf\u00e9\x00!"], 8)[0].tolist() == [99, 97, 102, 195, 169, 33, 0, 0]


def test_imdb_layout_and_layout_errors(tmp_path):
    imdb = tmp_path / "aclImdb"
    reviews = {"neg": ["Bad film, long and dull " * 3, "Poor."], "pos": ["Good.", "A fine, warm story."]}
    for split in ("train", "test"):
        for label, texts in reviews.items():
            (imdb / split / label).mkdir(parents=True)
            for i, review in enumerate(texts):
                (imdb / split / label / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(review)
        (imdb / split / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0000001/usercomments\n")
    (imdb / "train" / "unsup").mkdir()                                     # aclImdb: unlabelled reviews
    (imdb / "train" / "unsup" / "0_0.txt").write_text("Unlabelled review.")
    data = labelled_text.load_classification_dataset(f"csv-text:{imdb}", 12, 0.0, seed=0)
    assert data.classes == ["neg", "pos"]
    assert len(data.train) == 4 and len(data.val) == 0
    assert data.test.labels.tolist() == [0, 0, 1, 1]
    assert data.test.images.shape == (4, 12) and data.test.images.dtype == torch.uint8
    assert bytes(data.test.images[0].tolist()) == b"Bad film, lo"                             # truncated
    assert bytes(data.test.images[2].tolist()) == b"Good." + bytes(7)                         # padded
    # Errors: no layout, one class, a test class never trained on.
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="expected train.csv and test.csv") as error:
        labelled_text.load_classification_dataset(f"csv-text:{tmp_path / 'nothing'}", 12, 0.1, seed=0)
    assert one_line(error)
    one = tmp_path / "one"
    one.mkdir()
    (one / "train.csv").write_text('"1","A","b"\n"1","C","d"\n')
    (one / "test.csv").write_text('"1","E","f"\n')
    with pytest.raises(DataError, match="one class only") as error:
        labelled_text.load_classification_dataset(f"csv-text:{one}", 12, 0.0, seed=0)
    assert one_line(error)
    (one / "test.csv").write_text('"2","E","f"\n')
    with pytest.raises(DataError, match="never occur in training") as error:
        labelled_text.load_classification_dataset(f"csv-text:{one}", 12, 0.0, seed=0)
    assert one_line(error)
    (one / "train.csv").write_text('"1","only one field"\n"2"\n')
    with pytest.raises(DataError, match="line 2 has 1 field") as error:
        labelled_text.load_classification_dataset(f"csv-text:{one}", 12, 0.0, seed=0)
    assert one_line(error)
    with pytest.raises(DataError, match="needs a path"):
        text.load_text_dataset("csv-text:", 12, 0.0, seed=0)


# ----------------------------------------------------------------------------- the review snippets


def test_the_shipped_snippets_match_their_md5_and_keep_each_distinct_snippet_once(tmp_path):
    blob = labelled_text.REVIEWS_ASSET.read_bytes()
    assert hashlib.md5(blob).hexdigest() == labelled_text.REVIEWS_MD5
    texts, labels = labelled_text.read_reviews()
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(blob).decode("utf-8"))))
    reviews = [r for r in rows if r["category"] in ("fresh", "rotten")]
    assert len(rows) > len(reviews) > len(texts) > 12_000            # plot summaries and repeats left out
    assert len(set(texts)) == len(texts) and all(t == t.strip() and t for t in texts)
    assert set(labels.tolist()) == {0, 1} and labels.dtype == np.int64
    label_of = {}
    for r in reviews:
        label_of.setdefault(r["text"].strip(), set()).add(r["category"])
    assert {t for t, kinds in label_of.items() if len(kinds) == 1} == set(texts)
    assert all(labelled_text.REVIEW_CLASSES[y] in label_of[t] for t, y in zip(texts, labels.tolist()))
    damaged = tmp_path / "reviews.csv.bz2"
    damaged.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(DataError, match="damaged") as error:
        labelled_text.read_reviews(damaged)
    assert one_line(error)


def test_review_folds_are_disjoint_stratified_and_drawn_from_the_seed():
    texts, labels = labelled_text.read_reviews()
    fresh = labels.mean()
    cut = labelled_text.read_labelled_texts("rotten-tomatoes", 0.1, seed=3, folds=5, fold=2)
    parts = [cut.train, cut.val, cut.test]
    rows = np.concatenate([part.rows for part in parts])
    assert np.array_equal(np.sort(rows), np.arange(len(texts)))          # every snippet once
    assert abs(len(cut.test) - len(texts) / 5) <= 1 and abs(len(cut.val) - 0.1 * 0.8 * len(texts)) <= 2
    for part in parts:
        assert abs(part.labels.mean() - fresh) < 0.005                    # stratified
        assert [texts[i] for i in part.rows[:5]] == part.texts[:5] and np.array_equal(labels[part.rows], part.labels)
    again = labelled_text.read_labelled_texts("rotten-tomatoes", 0.1, seed=3, folds=5, fold=2)
    assert np.array_equal(again.test.rows, cut.test.rows) and np.array_equal(again.val.rows, cut.val.rows)
    other_fold = labelled_text.read_labelled_texts("rotten-tomatoes", 0.1, seed=3, folds=5, fold=0)
    other_seed = labelled_text.read_labelled_texts("rotten-tomatoes", 0.1, seed=4, folds=5, fold=2)
    assert not set(other_fold.test.rows) & set(cut.test.rows)             # the folds of one seed partition
    assert not np.array_equal(other_seed.test.rows, cut.test.rows)
    with pytest.raises(DataError, match="--fold must be in 0..4") as error:
        labelled_text.read_labelled_texts("rotten-tomatoes", 0.1, seed=0, folds=5, fold=5)
    assert one_line(error)


def test_the_byte_and_tfidf_forms_of_the_snippets_share_their_splits():
    as_bytes = data.load_dataset("rotten-tomatoes", ".", val_fraction=0.1, seed=1, context=64,
                                 table=TableOptions(folds=5, fold=1))
    as_table = data.load_dataset("tfidf:rotten-tomatoes", ".", val_fraction=0.1, seed=1,
                                 table=TableOptions(folds=5, fold=1))
    texts = labelled_text.read_labelled_texts("rotten-tomatoes", 0.1, seed=1, folds=5, fold=1)
    for part in ("train", "val", "test"):
        rows = getattr(texts, part).rows
        assert torch.equal(getattr(as_bytes, part).labels, getattr(as_table, part).targets)
        assert np.array_equal(getattr(as_table, part).rows.numpy(), rows)
        first = getattr(texts, part).texts[0].encode("utf-8")[:64]
        assert bytes(getattr(as_bytes, part).images[0, :len(first)].tolist()) == first
    assert as_bytes.classes == as_table.classes == ["rotten", "fresh"]
    assert as_table.in_shape == (text_features.TFIDF_FEATURES,) and as_table.task == "classification"
    norms = as_table.test.features.norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones(int((norms > 0).sum())), atol=1e-5)   # rows of unit norm
    assert "fold 1 of 5" in as_bytes.source and "fold 1 of 5" in as_table.source


# ----------------------------------------------------------------------------- TF-IDF tables


def test_tfidf_features_come_from_the_training_texts_alone(tmp_path):
    root = tmp_path / "ag"
    write_ag_news(root)
    table = data.load_dataset(f"tfidf:csv-text:{root}", ".", val_fraction=0.25, seed=0)
    # AG_TEST's words that no training text holds ("drawn", "summit", ...) have no column.
    names = set(table.feature_names)
    train_texts = labelled_text.read_labelled_texts(f"csv-text:{root}", 0.25, seed=0).train.texts
    train_words = set(re.findall(r"\b\w\w+\b", " ".join(train_texts).lower()))
    unigrams = {name for name in names if " " not in name}
    assert unigrams and unigrams <= train_words and "drawn" not in names and "summit" not in names
    assert table.classes == ["1", "2", "3", "4"] and table.test.targets.tolist() == [1, 3, 0]
    assert len(table.train) == 9 and len(table.val) == 3 and len(table.test) == 3
    bytes_form = labelled_text.load_classification_dataset(f"csv-text:{root}", 32, 0.25, seed=0)
    assert torch.equal(bytes_form.val.labels, table.val.targets)               # the same validation texts
    with pytest.raises(DataError, match="has its own test split") as error:
        data.load_dataset(f"tfidf:csv-text:{root}", ".", val_fraction=0.25, seed=0, table=TableOptions(fold=1))
    assert one_line(error)
    with pytest.raises(DataError, match="tfidf: takes labelled texts") as error:
        data.load_dataset("tfidf:mnist", ".", val_fraction=0.1, seed=0)
    assert one_line(error)


def test_the_principal_plane_of_a_sparse_or_dense_matrix_is_the_svds():
    from scipy import sparse
    rng = np.random.default_rng(0)
    scale = np.r_[4.0, 2.0, np.full(58, 0.3)]                        # two clear leading directions
    dense = rng.standard_normal((200, 60)) * scale @ np.linalg.qr(rng.standard_normal((60, 60)))[0]
    dense[np.abs(dense) < 0.5] = 0                                    # sparse enough to store as such
    for matrix in (dense, sparse.csr_matrix(dense)):
        mean, plane = text_features.principal_plane(matrix)
        assert np.allclose(mean, dense.mean(axis=0))
        _, _, vt = np.linalg.svd(dense - dense.mean(axis=0), full_matrices=False)
        assert np.allclose(np.abs((plane * vt[:2]).sum(axis=1)), 1, atol=1e-6)
        assert np.allclose(plane @ plane.T, np.eye(2), atol=1e-9)


# ----------------------------------------------------------------------------- the command line


def test_the_flags_of_the_review_snippets(tmp_path):
    out = ["--out", str(tmp_path / "runs")]
    cfg = parse_args(["--dataset", "tfidf:rotten-tomatoes", *out])
    assert cfg.epochs == 10 and cfg.batch_size == parse_args(out).batch_size     # its own defaults
    validate(cfg)
    assert cfg.default_run_name().startswith("tfidf-rotten-tomatoes-") and "-mlp-f0of5-s0" in cfg.default_run_name()
    cfg = parse_args(["--dataset", "rotten-tomatoes", "--arch", "gpt", "--fold", "3", *out])
    validate(cfg)
    assert cfg.default_run_name().endswith("-gpt-f3of5-s0")
    for argv, message in ((["--dataset", "rotten-tomatoes"], "tfidf:rotten-tomatoes"),
                          (["--dataset", f"csv-text:{tmp_path}", "--arch", "gpt", "--fold", "1"], "has one: drop it"),
                          (["--dataset", "tfidf:rotten-tomatoes", "--arch", "gpt"], "reads bytes"),
                          (["--dataset", "rotten-tomatoes", "--arch", "gpt", "--target-bins", "3"], "has none: drop it")):
        with pytest.raises(ConfigError, match=message) as error:
            validate(parse_args([*argv, *out]))
        assert one_line(error)


def test_tiny_runs_on_the_review_snippets_as_bytes_and_as_tfidf(tmp_path, capsys):
    out = tmp_path / "runs"
    common = ["--epochs", "1", "--threads", "1", "--out", str(out), "--log-every", "0", "--train-eval-size", "256"]
    assert launch.main(["--dataset", "tfidf:rotten-tomatoes", "--experts", "2", "--expert-hidden", "8",
                        "--gating", "hard", "--batch-size", "256", *common, "--run-name", "tfidf"]) == 0
    assert launch.main(["--dataset", "rotten-tomatoes", "--arch", "gpt", *TINY, "--batch-size", "128",
                        "--context", "32", "--gating", "topk", "--top-k", "2", *common, "--run-name", "bytes"]) == 0
    for name, floor in (("tfidf", 0.6), ("bytes", 0.0)):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "completed" and floor <= summary["test_acc"] <= 1
    # The TF-IDF mixture already beats the majority class (58 % fresh) after one epoch.
    assert json.loads((out / "tfidf" / "summary.json").read_text())["test_acc"] > 0.6
    config = json.loads((out / "bytes" / "config.json").read_text())
    assert config["config"]["fold"] == 0 and config["config"]["folds"] == 5
    # A bad fold is refused before anything is written.
    code = launch.main(["--dataset", "tfidf:rotten-tomatoes", "--fold", "7", *common, "--run-name", "bad"])
    assert code == EXIT_BAD_INPUT and not (out / "bad").exists()
    assert "--fold must be in 0..4" in capsys.readouterr().err
