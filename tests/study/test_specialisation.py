"""moelab/study/specialisation.py: routing statistics against cases with known answers."""
import math

import numpy as np
import pandas as pd
import pytest

from moelab.study import specialisation as spec

from .synthetic_logs import C, E, expert_rows, routing_rows, top_k_gates


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
