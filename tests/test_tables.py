"""Tables: CSV and scikit-learn loaders, preprocessing fitted on the training rows only, folds,
the regression losses against slow per-sample references, gradients to every router, bad input
and one run per task through the CLI."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from moelab import data
from moelab.data import tables
from moelab.layers.routing import GATING_CHOICES
from moelab.models.builder import build_model
from moelab.models.spec import ModelSpec
from moelab.training import launch
from moelab.training.tasks import Regression, gaussian_log_likelihood, mixture_nll


def write_csv(path, rows: int = 60, seed: int = 0, **overrides):
    """A table with two numeric features, one string feature and a string target that depends on them."""
    rng = np.random.default_rng(seed)
    size = rng.normal(10.0, 3.0, rows)
    weight = rng.normal(-5.0, 0.5, rows)
    colour = rng.choice(["red", "green", "blue"], rows)
    kind = np.where(size + 2 * (colour == "red") > 11, "big", "small")
    frame = pd.DataFrame({"size": size, "weight": weight, "colour": colour, "kind": kind,
                          "price": 3 * size + weight + rng.normal(0, 0.1, rows)})
    for column, values in overrides.items():
        frame[column] = values
    frame.to_csv(path, index=False)
    return frame


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


# ----------------------------------------------------------------------------- regression losses

def _moe_output(gating: str, combine: str, variance: bool, seed: int = 0, rows: int = 9):
    torch.manual_seed(seed)
    spec = ModelSpec(experts=4, gating=gating, top_k=2, expert_hidden=8, combine="logits")
    model = build_model(spec, (5,), 2 if variance else 1)
    x, y = torch.randn(rows, 5), torch.randn(rows)
    return model, model(x), y


@pytest.mark.parametrize("gating", ["soft", "topk", "hard", "expert-choice"])
@pytest.mark.parametrize("variance", [False, True])
def test_mixture_likelihood_matches_a_per_sample_reference(gating, variance):
    model, output, y = _moe_output(gating, "probs", variance)
    loss = Regression("probs", variance, [0.0]).per_sample_loss(output, y)
    weights = output.routing.weights.detach()
    for n in range(len(y)):
        density = 0.0
        for e in range(4):
            if weights[n, e] == 0:
                continue
            m = ((output.sample_index == n) & (output.expert_index == e)).nonzero().item()
            mu = output.expert_logits[m, 0].item()
            var = math.exp(output.expert_logits[m, 1].item()) if variance else 1.0
            normal = math.exp(-(y[n].item() - mu) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)
            density += weights[n, e].item() * normal
        expected = -math.log(density) if density > 0 else -math.log(1e-12)
        assert loss[n].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("gating", ["soft", "topk", "hard", "expert-choice"])
def test_combined_squared_error_matches_a_per_sample_reference(gating):
    model, output, y = _moe_output(gating, "logits", False)
    loss = Regression("logits", False, [0.0]).per_sample_loss(output, y)
    weights = output.routing.weights.detach()
    for n in range(len(y)):
        mixed = sum(weights[n, e].item() * output.expert_logits[
            ((output.sample_index == n) & (output.expert_index == e)).nonzero().item(), 0].item()
            for e in range(4) if weights[n, e] != 0)
        assert loss[n].item() == pytest.approx((y[n].item() - mixed) ** 2, rel=1e-4, abs=1e-6)


def test_gaussian_log_likelihood_is_the_normal_density():
    y, mean, log_var = torch.tensor([0.3, -1.0]), torch.tensor([0.0, 0.5]), torch.tensor([0.2, -0.4])
    normal = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    torch.testing.assert_close(gaussian_log_likelihood(y, mean, log_var), normal.log_prob(y))
    unit = torch.distributions.Normal(mean, 1.0)
    torch.testing.assert_close(gaussian_log_likelihood(y, mean, None), unit.log_prob(y))


def test_a_row_no_expert_took_costs_the_floor_and_no_nan():
    expert_out = torch.tensor([[0.5]], requires_grad=True)
    loss = mixture_nll(expert_out, torch.tensor([0.8]), torch.tensor([0]), torch.tensor([1]),
                       torch.tensor([0.0, 1.0]), 2)
    assert loss[1].item() == pytest.approx(-math.log(1e-12))
    loss.sum().backward()
    assert torch.isfinite(expert_out.grad).all()


@pytest.mark.parametrize("gating", GATING_CHOICES)
@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_regression_losses_reach_the_router_of_every_gating(gating, combine):
    model, output, y = _moe_output(gating, combine, combine == "probs", rows=32)
    model.train()
    output = model(torch.randn(32, 5))
    Regression(combine, combine == "probs", [0.0]).loss(output, y).backward()
    router_grads = [p.grad for p in model.moe.router.parameters() if p.requires_grad]
    assert router_grads and all(g is not None and torch.isfinite(g).all() for g in router_grads)
    assert sum(g.abs().sum().item() for g in router_grads) > 0


# ----------------------------------------------------------------------------- the CLI

def cli(tmp_path, *args):
    return launch.main(["--out", str(tmp_path / "runs"), "--run-name", "r", "--threads", "1", *args])


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


@pytest.mark.parametrize("args, message", [
    (("--dataset", "iris", "--target", "x"), "--target names the column"),
    (("--dataset", "mnist", "--expert-variance"), "--expert-variance is for a regression"),
    (("--dataset", "diabetes", "--expert-variance"), "add --combine probs"),
    (("--dataset", "iris", "--expert-variance", "--combine", "probs"), "iris is a classification"),
    (("--dataset", "iris", "--fold", "5"), "--fold must be in 0..4"),
    (("--dataset", "iris", "--arch", "vit"), "is a table of features"),
])
def test_flags_a_table_cannot_take_are_refused(tmp_path, capsys, args, message):
    assert cli(tmp_path, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_table_flags_are_refused_elsewhere_and_tables_under_torchrun(tmp_path, capsys, monkeypatch):
    assert cli(tmp_path, "--dataset", "mnist", "--folds", "3") == 2
    assert "--folds sets how a table is split" in capsys.readouterr().err
    assert cli(tmp_path, "--dataset", "iris", "--target-bins", "3") == 2
    assert "--target-bins bins a regression target" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli(tmp_path, "--dataset", "iris") == 2
    assert "run python train.py without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_run_name_tells_two_targets_of_one_csv_apart(tmp_path):
    from moelab.training.config import parse_args
    names = {parse_args(["--dataset", f"csv:{tmp_path / 't.csv'}", "--target", target]).default_run_name()
             for target in ("kind", "price")}
    assert len(names) == 2 and all("-f0of5-" in name for name in names)


def test_a_regression_whose_validation_r2_is_undefined_still_selects_an_epoch(tmp_path):
    path = tmp_path / "small.csv"
    write_csv(path, rows=14)
    assert cli(tmp_path, "--dataset", f"csv:{path}", "--target", "price", "--experts", "2", "--epochs", "3",
               "--val-fraction", "0.1") == 0
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best_epoch"] >= 1
    assert summary["best_val_r2"] is None or math.isnan(summary["best_val_r2"])


def test_a_classification_table_trains_through_the_cli(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(path, rows=200)
    assert cli(tmp_path, "--dataset", f"csv:{path}", "--target", "kind", "--experts", "4", "--gating", "topk",
               "--epochs", "8", "--expert-hidden", "16") == 0
    run = tmp_path / "runs" / "r"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["test_acc"] > 0.8
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["epochs"] == 8 and config["config"]["batch_size"] == 16   # the table default
    assert config["dataset"]["features"][-1] == "colour=red"
    predictions = pd.read_csv(run / "test_predictions.csv")
    assert len(predictions) == 40 and {"pc1", "pc2", "top1_expert", "gate_3", "expert_3"} <= set(predictions.columns)
    assert (predictions.prediction == predictions.target).mean() == pytest.approx(summary["test_acc"])
    grid = pd.read_csv(run / "gate_grid.csv")
    assert len(grid) == 1600 and grid.top1_expert.between(0, 3).all()


@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_a_regression_trains_through_the_cli_and_logs_its_errors(tmp_path, combine):
    extra = ("--combine", "probs", "--expert-variance") if combine == "probs" else ()
    assert cli(tmp_path, "--dataset", "diabetes", "--experts", "4", "--gating", "topk", "--epochs", "6",
               "--expert-hidden", "16", *extra) == 0
    run = tmp_path / "runs" / "r"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[0]
    assert metrics.train_acc.isna().all() and metrics.val_r2.notna().all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "regression" and summary["test_acc"] is None and summary["test_r2"] > 0.2
    predictions = pd.read_csv(run / "test_predictions.csv")
    error = predictions.prediction - predictions.target
    assert summary["test_rmse"] == pytest.approx(math.sqrt((error ** 2).mean()), rel=1e-4)
    assert summary["test_mae"] == pytest.approx(error.abs().mean(), rel=1e-4)
    spread = ((predictions.target - predictions.target.mean()) ** 2).sum()
    assert summary["test_r2"] == pytest.approx(1 - (error ** 2).sum() / spread, rel=1e-4)
    experts = pd.read_csv(run / "experts.csv")
    test = experts[experts.split == "test"]
    assert test.loss_all.notna().all() and test.acc_all.isna().all()
    routing = pd.read_csv(run / "routing.csv")
    assert sorted(routing["class"].unique()) == [0, 1, 2, 3, 4]               # the five target bins
    assert routing[routing.split == "test"]["top1"].sum() == len(predictions)


def test_tune_chooses_the_learning_rate_and_weight_decay_on_the_validation_rows_and_trains_with_them(tmp_path):
    from moelab.training import tuning

    assert cli(tmp_path, "--dataset", "iris", "--experts", "2", "--gating", "topk", "--epochs", "4",
               "--expert-hidden", "8", "--tune") == 0
    run = tmp_path / "runs" / "r"
    tried = pd.read_csv(run / "tuning.csv")
    assert len(tried) == len(tuning.candidates()) == 9 and tried.chosen.sum() == 1
    chosen = tried[tried.chosen == 1].iloc[0]
    best = tried.sort_values(["best_val_score", "val_loss_at_best"], ascending=[False, True], kind="stable").iloc[0]
    assert (chosen.lr, chosen.weight_decay) == (best.lr, best.weight_decay)
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["lr"], config["weight_decay"], config["tune"]) == (chosen.lr, chosen.weight_decay, True)
    summary = json.loads((run / "summary.json").read_text())
    # the run is the chosen candidate trained again: same seed, same rows, same numbers
    assert summary["best_val_acc"] == pytest.approx(chosen.best_val_score, abs=1e-7)
    assert summary["best_epoch"] == chosen.best_epoch
    assert not (run / tuning.SCRATCH).exists()
    assert cli(tmp_path, "--dataset", "mnist", "--tune", "--run-name", "m") == 2


# ----------------------------------------------------------------------------- the grid and its references

def test_references_score_the_same_folds_as_the_mixtures_and_aggregate_over_folds(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from moelab.study import grids, logs, references, sweep

    runs = [r for r in grids.with_seeds(grids.runs("tabular", datasets=("iris",)), (0, 1))
            if r.label == "ref-logistic" and r.fold in (0, 1)]
    for run in runs:
        assert sweep.execute(run, tmp_path, None, "cpu", 1).status == "done"
    fold = data.load_dataset("iris", "/nonexistent", val_fraction=0.15, seed=1, table=tables.TableOptions(fold=1))
    x = {split: getattr(fold, split).features.numpy() for split in ("train", "val", "test")}
    y = {split: getattr(fold, split).targets.numpy() for split in x}
    # tuned on the validation rows: the C of the best validation accuracy, ties to the lower log-loss
    fits = {c["C"]: LogisticRegression(max_iter=5000, C=c["C"]).fit(x["train"], y["train"])
            for c in references.TUNE_GRID["logistic"]}
    val = {c: ((m.predict(x["val"]) == y["val"]).mean(),
               -np.log(m.predict_proba(x["val"])[np.arange(len(y["val"])), y["val"]]).mean()) for c, m in fits.items()}
    best = min(val, key=lambda c: (-val[c][0], val[c][1]))
    recorded = json.loads((tmp_path / "runs" / "tabular" / runs[-1].name / "config.json").read_text())
    assert recorded["tuned"]["chosen"] == {"C": best} and recorded["config"]["tune"] is True
    accuracy = (fits[best].predict(x["test"]) == y["test"]).mean()
    table = logs.run_table(tmp_path)
    row = table[(table.seed == 1) & (table.fold == 1)].iloc[0]
    assert row.test_acc == pytest.approx(accuracy) and row.model == "reference" and row.label == "ref-logistic"
    summary = logs.aggregate(table)
    assert summary.iloc[0].seeds == 2 and summary.iloc[0].folds == 2
    assert summary.iloc[0].test_acc_mean == pytest.approx(table.test_acc.mean())
    scores = references.regression_scores(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 3.0]))
    assert scores["rmse"] == pytest.approx(math.sqrt(2 / 3)) and scores["r2"] == pytest.approx(1 - 2 / (14 / 3))


def test_a_compact_run_keeps_config_summary_and_metrics(tmp_path):
    from moelab.study import grids, sweep

    run = next(r for r in grids.runs("tabular", 1, datasets=("iris",)) if r.label == "e2-top1" and r.fold == 1)
    assert not grids.keeps_every_log(run)
    assert sweep.execute(run, tmp_path, None, "cpu", 1).status == "done"
    kept = sorted(p.name for p in (tmp_path / "runs" / "tabular" / run.name).iterdir())
    assert kept == ["config.json", "metrics.csv", "summary.json", "tuning.csv"]
    shown = next(r for r in grids.runs("tabular", 1, datasets=("iris",)) if r.label == "e4-top2" and r.fold == 0)
    assert grids.keeps_every_log(shown)
