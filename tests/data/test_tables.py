"""moelab/data/tables.py: CSV and scikit-learn tables, preprocessing fitted on the training rows only, folds, bad tables."""
import numpy as np
import pandas as pd
import pytest
import torch
from runs import cli
from synthetic import write_csv

from moelab import data
from moelab.data import tables


def load(path, target="kind", **options):
    return data.load_dataset(f"csv:{path}", "/nonexistent", val_fraction=0.2, seed=0,
                             table=tables.TableOptions(target=target, **options))


# ----------------------------------------------------------------------------- loading

def test_csv_table_standardises_numbers_and_one_hot_encodes_strings_from_the_training_rows(tmp_path):
    frame = write_csv(tmp_path / "t.csv")
    ds = load(tmp_path / "t.csv")
    assert ds.task == "classification" and ds.classes == ["big", "small"]
    assert ds.feature_names == ["size", "weight", "price", "colour=blue", "colour=green", "colour=red"]
    train = ds.train.features.numpy()
    np.testing.assert_allclose(train[:, :3].mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(train[:, :3].std(axis=0), 1, atol=1e-5)
    rows = ds.train.rows.numpy()
    expected = (frame["size"].to_numpy() - frame["size"].to_numpy()[rows].mean()) / frame["size"].to_numpy()[rows].std()
    np.testing.assert_allclose(ds.test.features[:, 0].numpy(), expected[ds.test.rows.numpy()], rtol=1e-5)
    one_hot = ds.test.features[:, 3:].numpy()
    assert (one_hot.sum(axis=1) == 1).all()
    colours = np.asarray(["blue", "green", "red"])[one_hot.argmax(axis=1)]
    assert list(colours) == list(frame.colour[ds.test.rows.numpy()])
    assert list(np.asarray(ds.classes)[ds.test.targets.numpy()]) == list(frame.kind[ds.test.rows.numpy()])


def test_preprocessing_never_sees_the_validation_or_test_rows(tmp_path):
    """Leakage test: changing the val and test rows (numbers, a category) changes nothing that
    the training rows give, and a category seen only outside training gets all zeros."""
    frame = write_csv(tmp_path / "a.csv")
    ds = load(tmp_path / "a.csv")
    held = np.concatenate([ds.val.rows.numpy(), ds.test.rows.numpy()])
    frame.loc[held, "size"] = 1e6
    frame.loc[held, "colour"] = "purple"
    frame.to_csv(tmp_path / "b.csv", index=False)
    changed = load(tmp_path / "b.csv")
    assert changed.feature_names == ds.feature_names                       # no column for "purple"
    torch.testing.assert_close(changed.train.features, ds.train.features)
    torch.testing.assert_close(changed.test.features[:, 1:3], ds.test.features[:, 1:3])   # weight, price
    assert (changed.test.features[:, 3:] == 0).all()
    assert (changed.test.features[:, 0] > 1e4).all()                       # scaled by training statistics


def test_a_regression_target_is_scaled_and_binned_from_the_training_rows_only(tmp_path):
    frame = write_csv(tmp_path / "a.csv")
    ds = load(tmp_path / "a.csv", target="price")
    train_rows = ds.train.rows.numpy()
    assert ds.target_mean == pytest.approx(frame.price.iloc[train_rows].mean())
    assert ds.target_std == pytest.approx(frame.price.iloc[train_rows].std(ddof=0))
    held = np.concatenate([ds.val.rows.numpy(), ds.test.rows.numpy()])
    frame.loc[held, "price"] = 1e6
    frame.to_csv(tmp_path / "b.csv", index=False)
    changed = load(tmp_path / "b.csv", target="price")
    assert (changed.target_mean, changed.target_std, changed.bin_edges) == (ds.target_mean, ds.target_std, ds.bin_edges)
    torch.testing.assert_close(changed.train.targets, ds.train.targets)
    bins = data.target_bins(ds.train.targets, ds.bin_edges)
    assert np.bincount(bins.numpy(), minlength=5).min() >= 0.15 * len(bins)


def test_missing_values_are_refused_naming_the_column_or_filled_with_training_medians(tmp_path):
    frame = write_csv(tmp_path / "t.csv")
    frame.loc[[3, 7], "weight"] = np.nan
    frame.loc[5, "colour"] = np.nan
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(data.DataError, match="column 'weight' has 2 missing values.*--impute median"):
        load(tmp_path / "m.csv")
    ds = load(tmp_path / "m.csv", impute="median")
    train_rows = ds.train.rows.numpy()
    median = frame.weight.iloc[train_rows].median()
    filled = frame.weight.fillna(median).to_numpy()
    scaled = (median - filled[train_rows].mean()) / filled[train_rows].std()
    position = {row: i for i, row in enumerate(np.concatenate([ds.train.rows, ds.val.rows, ds.test.rows]).tolist())}
    every = torch.cat([ds.train.features, ds.val.features, ds.test.features])
    for row in (3, 7):
        assert every[position[row], 1].item() == pytest.approx(scaled, rel=1e-5)
    mode = frame.colour.iloc[train_rows].mode().iloc[0]                    # the most frequent training colour
    assert ds.feature_names[3 + int(every[position[5], 3:].argmax())] == f"colour={mode}"
    assert every[position[5], 3:].sum().item() == 1


def test_the_task_follows_the_target_and_can_be_overridden(tmp_path):
    frame = write_csv(tmp_path / "t.csv")
    frame["grade"] = np.arange(len(frame)) % 3 + 1
    frame.to_csv(tmp_path / "g.csv", index=False)
    assert load(tmp_path / "g.csv", target="price").task == "regression"
    assert load(tmp_path / "g.csv", target="grade").task == "classification"
    assert load(tmp_path / "g.csv", target="grade").classes == ["1", "2", "3"]
    forced = load(tmp_path / "g.csv", target="grade", task="regression")
    assert forced.task == "regression" and len(forced.classes) >= 2        # target bins
    assert forced.raw_targets[forced.test.rows.numpy()].tolist() == frame.grade[forced.test.rows.numpy()].tolist()


def test_stratified_folds_partition_the_rows_and_keep_every_class_share():
    labels = np.repeat([0, 1, 2], [50, 30, 7])
    folds = tables.assign_folds(len(labels), 5, seed=3, labels=labels)
    assert sorted(np.bincount(folds).tolist()) in ([17, 17, 17, 18, 18], )
    for c in range(3):
        per_fold = np.bincount(folds[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert not np.array_equal(folds, tables.assign_folds(len(labels), 5, seed=4, labels=labels))
    iris = [data.load_dataset("iris", "/nonexistent", val_fraction=0.1, seed=1,
                              table=tables.TableOptions(fold=f)) for f in range(5)]
    tests = [set(d.test.rows.tolist()) for d in iris]
    assert set().union(*tests) == set(range(150)) and sum(map(len, tests)) == 150
    for d in iris:
        splits = [set(s.rows.tolist()) for s in (d.train, d.val, d.test)]
        assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
        assert np.bincount(d.test.targets.numpy()).tolist() == [10, 10, 10]


def test_the_scikit_learn_tables_load_with_their_tasks():
    for name, task, shape, rows in (("iris", "classification", (4,), 150), ("wine", "classification", (13,), 178),
                                    ("breast-cancer", "classification", (30,), 569),
                                    ("diabetes", "regression", (10,), 442)):
        ds = data.load_dataset(name, "/nonexistent", table=tables.TableOptions())
        assert ds.task == task and ds.in_shape == shape and "scikit-learn" in ds.source
        every = torch.cat([ds.train.rows, ds.val.rows, ds.test.rows])
        assert sorted(every.tolist()) == list(range(rows))
    diabetes = data.load_dataset("diabetes", "/nonexistent", table=tables.TableOptions())
    bins = data.target_bins(diabetes.train.targets, diabetes.bin_edges)
    assert np.bincount(bins.numpy()).min() >= 0.15 * len(bins)              # quantile bins: about 1/5 each


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("args, message", [
    (("--target", "nope"), "--target nope: t.csv has no such column"),
    (("--target", "const"), "--target const has one value"),
    (("--target", "colour", "--task", "regression"), "--target colour is not numeric"),
    (("--target", "kind", "--folds", "80"), "fewer than --folds 80"),
])
def test_bad_tables_exit_2_with_one_line_and_create_nothing(tmp_path, capsys, args, message):
    write_csv(tmp_path / "t.csv", const=1)
    assert cli(tmp_path, "--dataset", f"csv:{tmp_path / 't.csv'}", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_table_without_a_numeric_feature_is_refused(tmp_path, capsys):
    pd.DataFrame({"colour": ["red", "blue"] * 5, "kind": ["a", "b"] * 5}).to_csv(tmp_path / "s.csv", index=False)
    assert cli(tmp_path, "--dataset", f"csv:{tmp_path / 's.csv'}", "--target", "kind") == 2
    assert "no numeric feature column" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
