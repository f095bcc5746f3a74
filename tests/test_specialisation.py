"""The routing statistics of specialisation.py against cases with known answers (shares that sum
to 1, balance at 1/E, a permutation of experts recovered exactly, unrelated routings below a
bound that holds for any seed), the test-gates reader, and the routing figures on synthetic logs."""
import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from moelab.study import logs, routing_figures
from moelab.study import specialisation as spec
from moelab.training.run_files import RunFileError

E, C = 4, 6


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def top_k_gates(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, E) renormalised top-k weights of random logits, and experts_used = k."""
    probs = softmax(np.random.default_rng(seed).normal(size=(n, E)))
    keep = np.argsort(-probs, axis=1)[:, :k]
    weights = np.zeros_like(probs)
    np.put_along_axis(weights, keep, np.take_along_axis(probs, keep, axis=1), axis=1)
    return weights / weights.sum(axis=1, keepdims=True), np.full(n, k)


def one_hot_profiles(assigned: np.ndarray, n_experts: int) -> np.ndarray:
    """P(expert | class) of experts that each take whole classes: class c -> expert assigned[c]."""
    profiles = np.zeros((n_experts, len(assigned)))
    profiles[assigned, np.arange(len(assigned))] = 1.0
    return profiles


# ----------------------------------------------------------------------------- activations

def test_processed_gate_values_follow_experts_used_not_nonzero_weights():
    weights = np.array([[0.7, 0.3, 0.0, 0.0],      # soft, two weights underflowed float16: 4 processed
                        [0.0, 0.6, 0.0, 0.4],      # top-2
                        [0.0, 0.0, 0.0, 0.0]])     # expert choice: no expert took it
    values = spec.processed_gate_values(weights, np.array([4, 2, 0]))
    assert sorted(values.tolist()) == [0.0, 0.0, 0.3, 0.4, 0.6, 0.7]


def test_histogram_and_experts_per_sample_shares_sum_to_one():
    values = np.random.default_rng(0).uniform(-0.5, 1.5, 1000)   # some outside the edges
    shares = spec.histogram_shares(values, np.linspace(0, 1, 11))
    assert shares.sum() == pytest.approx(1.0) and shares.shape == (10,)
    assert spec.histogram_shares(np.array([]), np.linspace(0, 1, 11)).sum() == 0.0
    used = np.array([0, 1, 1, 2, 4])
    assert spec.experts_per_sample_shares(used, E).tolist() == [0.2, 0.4, 0.2, 0.0, 0.2]


@pytest.mark.parametrize("k", [1, 2, E])
def test_balanced_routing_gives_every_expert_one_over_e(k):
    n = 8 * E
    weights = np.zeros((n, E))
    for i in range(n):                                # sample i goes to experts i, i+1, ..., i+k-1 (mod E)
        weights[i, [(i + j) % E for j in range(k)]] = 1.0 / k
    assignments = spec.assignment_shares(weights, np.full(n, k))
    assert assignments == pytest.approx(np.full(E, 1.0 / E))
    assert spec.gate_mass_shares(weights) == pytest.approx(np.full(E, 1.0 / E))


def test_collapsed_routing_and_random_top2_shares():
    weights = np.zeros((50, E))
    weights[:, 2] = 1.0
    assert spec.assignment_shares(weights, np.ones(50, dtype=int)).tolist() == [0, 0, 1, 0]
    weights, used = top_k_gates(500, 2, seed=1)
    assert spec.assignment_shares(weights, used).sum() == pytest.approx(1.0)
    assert spec.gate_mass_shares(weights).sum() == pytest.approx(1.0)


def test_load_order_breaks_ties_by_gate_mass():
    order = spec.load_order(np.full(E, 0.25), np.array([0.1, 0.4, 0.2, 0.3]))   # soft: assignments tie
    assert order.tolist() == [1, 3, 2, 0]
    assert spec.load_order(np.array([0.1, 0.5, 0.4, 0.0]), np.full(E, 0.25)).tolist() == [1, 2, 0, 3]


def test_over_seeds():
    table = spec.over_seeds(np.array([[1.0, 2.0], [3.0, 2.0]]))
    assert table["mean"].tolist() == [2.0, 2.0] and table["min"].tolist() == [1.0, 2.0]
    assert table["std"].iloc[0] == pytest.approx(math.sqrt(2)) and table["seeds"].iloc[0] == 2
    assert spec.over_seeds(np.array([[1.0, 2.0]]))["std"].isna().all()


# ----------------------------------------------------------------------------- loss over training

def expert_rows(seed: int, loads: list[float], losses: list[float], steps=(40, 80, 120)) -> pd.DataFrame:
    """experts.csv rows of one run: a test row per expert (its load) and train_batch rows whose
    loss is constant per expert."""
    rows = [{"split": "test", "step": steps[-1], "expert": e, "frac_routed": load, "mean_gate": load,
             "loss_routed": np.nan} for e, load in enumerate(loads)]
    rows += [{"split": "train_batch", "step": step, "expert": e, "frac_routed": load, "mean_gate": load,
              "loss_routed": loss if load > 0 else np.nan}
             for step in steps for e, (load, loss) in enumerate(zip(loads, losses))]
    return pd.DataFrame(rows).assign(grid="g", dataset="d", label="top1", seed=seed, run=f"r{seed}")


def test_loss_by_load_rank_aligns_experts_of_different_seeds_by_load():
    # The most loaded expert is expert 0 in seed 0 and expert 2 in seed 1; both have loss 1.
    experts = pd.concat([expert_rows(0, [0.5, 0.3, 0.2, 0.0], [1.0, 2.0, 3.0, 9.0]),
                         expert_rows(1, [0.2, 0.0, 0.5, 0.3], [3.0, 9.0, 1.0, 2.0])])
    experts = experts.astype({"step": object, "loss_routed": object})   # as logs.read_all may stack them
    table = spec.loss_by_load_rank(experts).set_index(["step", "rank"])
    assert table.loc[(80, 1), "mean"] == 1.0 and table.loc[(80, 1), "std"] == 0.0
    assert table.loc[(80, 3), "mean"] == 3.0 and table.loc[(80, 1), "seeds"] == 2
    assert table.loc[(80, 4), "seeds"] == 0                      # a dead expert has no loss
    smoothed = spec.loss_by_load_rank(experts, window=3).set_index(["step", "rank"])
    assert smoothed.loc[(80, 2), "mean"] == 2.0                 # constant curves stay constant


# ----------------------------------------------------------------------------- data per expert

def routing_rows(profiles_counts: np.ndarray, seed: int, label: str = "top1") -> pd.DataFrame:
    """routing.csv test rows of one run from an (E, C) table of top-1 counts."""
    experts, classes = np.indices(profiles_counts.shape)
    return pd.DataFrame({"split": "test", "expert": experts.ravel(), "class": classes.ravel(),
                         "count": profiles_counts.ravel(), "gate_mass": profiles_counts.ravel() * 0.5,
                         "top1": profiles_counts.ravel()}).assign(grid="g", dataset="d", label=label, seed=seed,
                                                                   run=f"{label}-s{seed}", epoch=1, step=10)


def test_class_profiles_columns_sum_to_one_and_keep_unused_experts():
    counts = np.array([[5, 0, 1], [5, 2, 0], [0, 0, 0]])      # expert 2 never chosen
    rows = routing_rows(counts, 0)
    rows = rows[rows.expert < 2]                                # and absent from the log
    rows.loc[rows.index[-1] + 1] = {**rows.iloc[0].to_dict(), "expert": 2, "count": 0, "top1": 0}
    profiles = spec.class_profiles(rows)
    assert profiles.shape == (3, 3)
    assert profiles.sum(axis=0) == pytest.approx([1.0, 1.0, 1.0])
    assert profiles[:, 0].tolist() == [0.5, 0.5, 0.0]


def test_hungarian_matching_recovers_a_permutation_exactly():
    rng = np.random.default_rng(3)
    profiles = rng.dirichlet(np.ones(E), size=C).T                # (E, C), columns sum to 1
    permutation = np.array([2, 0, 3, 1])
    order, overlap = spec.match_experts(profiles, profiles[permutation])
    assert overlap == pytest.approx(1.0)
    assert (profiles[permutation][order] == profiles).all()
    chance = spec.chance_overlap(profiles, profiles[permutation])
    assert chance < 1.0 and spec.agreement(overlap, chance) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(20))
def test_unrelated_specialisations_agree_little(seed):
    # Each of 200 classes goes to one of 4 experts, independently in the two routings. For a fixed
    # matching the overlap is Binomial(200, 1/4) / 200; by Hoeffding it exceeds 0.5 with
    # probability < exp(-2 * 200 * 0.25**2) = 1.4e-11, so over the 24 matchings < 4e-10 per seed.
    # The mean overlap over the 24 matchings is 1/4, so chance >= 1/4 and agreement <= 0.25 / 0.75.
    rng = np.random.default_rng(seed)
    a = one_hot_profiles(rng.integers(0, 4, 200), 4)
    b = one_hot_profiles(rng.integers(0, 4, 200), 4)
    overlap = spec.match_experts(a, b)[1]
    assert overlap < 0.5
    assert spec.agreement(overlap, spec.chance_overlap(a, b, permutations=20, seed=seed)) < 0.5


def test_unspecialised_routing_has_no_agreement_to_measure():
    uniform = np.full((E, C), 1.0 / E)
    one_class_experts = one_hot_profiles(np.arange(C) % E, E)
    assert spec.match_experts(one_class_experts, uniform)[1] == pytest.approx(1.0 / E)
    chance = spec.chance_overlap(uniform, uniform)
    assert chance == pytest.approx(1.0) and math.isnan(spec.agreement(1.0, chance))


def test_seed_agreement_of_relabelled_seeds_is_one():
    counts = np.array([[90, 5, 0, 0, 3, 1], [5, 90, 10, 0, 3, 1], [5, 5, 90, 0, 4, 1], [0, 0, 0, 100, 90, 97]])
    routing = pd.concat([routing_rows(counts[order], seed) for seed, order in
                         enumerate(([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]))])
    table = spec.seed_agreement(routing, permutations=20)
    row = table.iloc[0]
    assert (row.seeds, row.pairs) == (3, 3)
    assert row.overlap_mean == pytest.approx(1.0) and row.agreement_mean == pytest.approx(1.0)
    assert row.chance_mean < 0.9


def test_diagonal_order_puts_each_expert_beside_its_class():
    profiles = one_hot_profiles(np.array([2, 0, 3, 1]), E)       # class c -> expert [2, 0, 3, 1][c]
    ordered = profiles[spec.diagonal_order(profiles)]
    assert (ordered == np.eye(E)).all()


# ----------------------------------------------------------------------------- the test-gates reader

def write_run(root, name: str, gates: dict, experts: int = 20):
    run_dir = root / "runs" / "gating" / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"config": {"dataset": "mnist", "seed": 0, "experts": experts}}))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    np.savez_compressed(run_dir / "test_gates.npz", **gates)
    return run_dir


def test_read_test_gates_scatters_the_top_weights_of_many_experts(tmp_path):
    n, experts = 3, 20
    top_experts = np.tile(np.arange(16, dtype=np.int16)[::-1], (n, 1))      # (N, 16), experts 15..0
    top_weights = np.full((n, 16), 1 / 16, dtype=np.float16)
    gates = {"group": np.arange(n, dtype=np.int16), "predicted": np.arange(n, dtype=np.int16),
             "experts_used": np.full(n, 16, dtype=np.int16), "gate_entropy": np.zeros(n, dtype=np.float16),
             "top_weights": top_weights, "top_experts": top_experts}
    write_run(tmp_path, "mnist-soft-s0", gates, experts)
    table = logs.read_test_gates(tmp_path, "gating", "mnist")
    assert len(table) == 1 and table.label.iloc[0] == "soft"
    weights = table.weights.iloc[0]
    assert weights.shape == (n, experts) and (weights[:, 16:] == 0).all()
    assert weights[:, :16] == pytest.approx(1 / 16)
    assert logs.read_test_gates(tmp_path, "other").empty


def test_read_test_gates_refuses_a_damaged_file(tmp_path):
    run_dir = write_run(tmp_path, "mnist-hard-s0", {"weights": np.eye(4, dtype=np.float16)}, 4)
    (run_dir / "test_gates.npz").write_bytes((run_dir / "test_gates.npz").read_bytes()[:40])
    with pytest.raises(RunFileError, match="npz"):
        logs.read_test_gates(tmp_path, "gating")


# ----------------------------------------------------------------------------- figures

def synthetic_gates() -> pd.DataFrame:
    rows = []
    for label, k in (("soft", E), ("hard", 1), ("top2", 2), ("expert-choice", 1)):
        for seed in range(2):
            weights, used = top_k_gates(200, k, seed)
            entropy = -(weights * np.log(np.where(weights > 0, weights, 1.0))).sum(axis=1)
            rows.append({"grid": "gating", "dataset": "mnist", "label": label, "seed": seed, "fold": None,
                         "run": f"mnist-{label}-s{seed}", "group": np.arange(200) % C, "predicted": np.arange(200) % C,
                         "experts_used": used, "gate_entropy": entropy.astype(np.float16), "weights": weights})
    return pd.DataFrame(rows)


def synthetic_logs() -> tuple[pd.DataFrame, pd.DataFrame]:
    experts, routing = [], []
    for label in ("soft", "hard", "top2"):
        for seed in range(3):
            loads = np.random.default_rng(seed).dirichlet(np.ones(E))
            experts.append(expert_rows(seed, list(loads), [0.5, 1.0, 1.5, 2.0]).assign(grid="gating", dataset="mnist",
                                                                                      label=label))
            counts = np.random.default_rng(seed).integers(0, 50, (E, C))
            routing.append(routing_rows(counts, seed, label).assign(grid="gating", dataset="mnist"))
    return pd.concat(experts), pd.concat(routing)


def test_figures_draw_synthetic_logs_and_say_when_there_are_none():
    experts, routing = synthetic_logs()
    figures = [routing_figures.activation_distributions(synthetic_gates()),
               routing_figures.expert_loss_curves(experts),
               routing_figures.class_routing(routing, class_names=[f"class {c}" for c in range(C)])]
    for figure in figures:
        assert isinstance(figure, plt.Figure) and len(figure.axes) > 1
    empty = [routing_figures.activation_distributions(synthetic_gates().iloc[:0]),
             routing_figures.expert_loss_curves(pd.DataFrame()),
             routing_figures.class_routing(pd.DataFrame()),
             routing_figures.class_routing(routing, dataset="fashion-mnist")]
    for figure in empty:
        assert "no completed runs" in figure.axes[0].texts[0].get_text()
    plt.close("all")
