"""What the experts of a router do, as pure functions under the figures of routing_figures.py.

Three questions, each from one log of a run (docs/run-files.md):
- how the router activates the experts (test_gates.npz): the gate weight of every expert that
  processed a sample, the number of experts per sample, each expert's share of the work;
- how each expert's loss evolves (experts.csv, split train_batch), experts numbered by their load
  because an expert's index means nothing from one seed to the next;
- which data each expert processes (routing.csv): its class profile, and whether seeds that start
  from different weights end with the same division of the classes, experts matched across seeds
  by the Hungarian algorithm.

Legend: N test samples, E experts, C classes, S seeds, B histogram bins.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment  # scipy comes with scikit-learn, a dependency

RUN_KEYS = ["grid", "dataset", "label", "seed"]
CONFIG_KEYS = ["grid", "dataset", "label"]


def _numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with ``columns`` as numbers: logs.read_all stacks the logs of every run, and one
    log with its header only (a ViT's experts.csv) leaves every column of the stack an object."""
    return frame.assign(**{column: pd.to_numeric(frame[column]) for column in columns})


# ----------------------------------------------------------------------------- activations (test_gates.npz)

def processed_gate_values(weights: np.ndarray, experts_used: np.ndarray) -> np.ndarray:
    """The combine weight of every (sample, expert) pair where the expert processed the sample:
    each sample's ``experts_used`` largest weights (E for soft routing, k for top-k, 0 to E for
    expert choice). Counted from experts_used, not from weight > 0, because a soft weight can
    underflow to 0 in the float16 of test_gates.npz and still have been computed.

    weights: (N, E); experts_used: (N,) -> (sum of experts_used,)
    """
    largest_first = -np.sort(-weights, axis=1)                                       # (N, E)
    processed = np.arange(weights.shape[1])[None, :] < experts_used[:, None]          # (N, E)
    return largest_first[processed]


def histogram_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin of ``edges`` (B + 1 increasing edges), so that bars of
    routers with different numbers of values compare; a value outside the range counts in the
    first or last bin, so the shares sum to 1 (all 0 when there are no values). -> (B,)"""
    counts = np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0]
    return counts / max(counts.sum(), 1)


def experts_per_sample_shares(experts_used: np.ndarray, n_experts: int) -> np.ndarray:
    """Share of the samples processed by 0, 1, ..., E experts. (N,) -> (E + 1,), sums to 1."""
    return np.bincount(experts_used.astype(np.int64), minlength=n_experts + 1) / max(len(experts_used), 1)


def assignment_shares(weights: np.ndarray, experts_used: np.ndarray) -> np.ndarray:
    """Each expert's share of the (sample, expert) assignments, i.e. of the expert computation:
    1/E each when balanced, whatever k (top-k gives every expert k/E of the samples, and k N
    assignments in all). Soft routing is always 1/E: every expert processes every sample.

    weights: (N, E); experts_used: (N,) -> (E,), sums to 1
    """
    n_experts = weights.shape[1]
    experts_by_weight = np.argsort(-weights, axis=1, kind="stable")                   # (N, E) largest first
    processed = np.arange(n_experts)[None, :] < experts_used[:, None]                 # (N, E)
    counts = np.bincount(experts_by_weight[processed], minlength=n_experts)           # (E,)
    return counts / max(counts.sum(), 1)


def gate_mass_shares(weights: np.ndarray) -> np.ndarray:
    """Each expert's share of the summed combine weights: the preference of a soft router, whose
    assignment shares are flat by construction. (N, E) -> (E,), sums to 1 (1/E when balanced)."""
    mass = weights.sum(axis=0, dtype=np.float64)                                      # (E,)
    return mass / mass.sum() if mass.sum() > 0 else np.full(weights.shape[1], 1.0 / weights.shape[1])


def load_order(assignment_share: np.ndarray, gate_share: np.ndarray) -> np.ndarray:
    """Experts from the most to the least loaded: by share of assignments, ties (soft routing,
    expert choice: equal by construction) broken by share of gate mass. (E,), (E,) -> (E,)"""
    return np.lexsort((-np.asarray(gate_share), -np.asarray(assignment_share)))


def over_seeds(per_seed: np.ndarray) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed), min and max over seeds of each column: (S, K) -> K rows."""
    per_seed = np.atleast_2d(np.asarray(per_seed, dtype=np.float64))
    std = per_seed.std(axis=0, ddof=1) if len(per_seed) > 1 else np.full(per_seed.shape[1], np.nan)
    return pd.DataFrame({"mean": per_seed.mean(axis=0), "std": std, "min": per_seed.min(axis=0),
                         "max": per_seed.max(axis=0), "seeds": len(per_seed)})


# ----------------------------------------------------------------------------- loss over training (experts.csv)

def loss_by_load_rank(experts: pd.DataFrame, rank_split: str = "test", window: int = 1) -> pd.DataFrame:
    """Each expert's cross-entropy on the training rows routed to it (split train_batch, every
    --log-every steps), summarised over seeds per load rank.

    Expert 3 of one seed and expert 3 of another have nothing in common, so each seed's experts
    are numbered by their load on ``rank_split`` at the end of training (rank 1 = the largest
    frac_routed, ties broken by mean_gate, as load_order) and rank r is averaged over seeds.
    A batch gives an expert a few dozen rows, so its loss is noisy: ``window`` > 1 first takes
    each expert's centred rolling mean over that many consecutive logs.
    experts: experts.csv rows of one or more runs, with logs.read_all's identity columns.
    Returns one row per (grid, dataset, label, step, rank): mean, std, min, max over the seeds
    where the expert had rows that step (``seeds``; an expert with no routed row has no loss).
    """
    experts = _numeric(experts, ["step", "expert", "frac_routed", "mean_gate", "loss_routed"])
    final = experts[experts.split == rank_split].sort_values(
        RUN_KEYS + ["frac_routed", "mean_gate"], ascending=[True] * len(RUN_KEYS) + [False, False])
    ranks = final[RUN_KEYS + ["expert"]].assign(rank=final.groupby(RUN_KEYS).cumcount() + 1)
    batches = experts[experts.split == "train_batch"].merge(ranks, on=RUN_KEYS + ["expert"])
    batches = batches.sort_values(RUN_KEYS + ["expert", "step"])
    batches["loss_routed"] = batches.groupby(RUN_KEYS + ["expert"]).loss_routed.transform(
        lambda loss: loss.rolling(window, min_periods=1, center=True).mean())
    table = batches.groupby(CONFIG_KEYS + ["step", "rank"]).loss_routed.agg(["mean", "std", "min", "max", "count"])
    return table.rename(columns={"count": "seeds"}).reset_index()


# ----------------------------------------------------------------------------- data per expert (routing.csv)

def class_profiles(routing: pd.DataFrame, value: str = "top1") -> np.ndarray:
    """P(expert | class) of one run on one split (its routing.csv rows): each class's ``value``
    per expert over the class's total. ``top1``: samples whose largest weight is the expert's
    (one per sample, for every router); ``count``: samples the expert processed; ``gate_mass``:
    summed combine weights. -> (E, C), every column with samples sums to 1."""
    routing = _numeric(routing, ["expert", "class", value])
    table = routing.pivot_table(index="expert", columns="class", values=value, aggfunc="sum", fill_value=0)
    table = table.reindex(index=range(int(routing.expert.max()) + 1), fill_value=0)   # experts never chosen
    counts = table.to_numpy(dtype=np.float64)                                          # (E, C)
    totals = counts.sum(axis=0, keepdims=True)                                         # (1, C)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def profile_overlap(profiles_a: np.ndarray, profiles_b: np.ndarray) -> float:
    """Mean over classes of sum_e min(a[e, c], b[e, c]): 1 minus the total-variation distance
    between the two routings of a class, averaged over classes; 1 = the same experts take the
    same share of every class, 0 = no class shares an expert. (E, C), (E, C) -> float"""
    return float(np.minimum(profiles_a, profiles_b).sum() / profiles_a.shape[1])


def match_experts(profiles_a: np.ndarray, profiles_b: np.ndarray) -> tuple[np.ndarray, float]:
    """The renumbering of b's experts that makes b's routing closest to a's: ``order`` with
    profile_overlap(a, b[order]) the largest of the E! renumberings, and that overlap. The
    overlap is a sum over matched pairs of experts, so the Hungarian algorithm finds the best
    renumbering exactly. (E, C), (E, C) -> ((E,), float)"""
    pair_overlap = np.minimum(profiles_a[:, None, :], profiles_b[None, :, :]).sum(axis=2)   # (E, E)
    rows, order = linear_sum_assignment(pair_overlap, maximize=True)
    return order[np.argsort(rows)], float(pair_overlap[rows, order].sum() / profiles_a.shape[1])


def chance_overlap(profiles_a: np.ndarray, profiles_b: np.ndarray, permutations: int = 100, seed: int = 0) -> float:
    """The matched overlap that b would reach if its experts split the classes as sharply and with
    the same loads, but along unrelated lines: mean of match_experts(a, b with its classes
    shuffled) over ``permutations`` shuffles (a fixed seed, so the number repeats). Near 1 when
    either routing ignores the class (every column alike), near 1/E for sharp one-class experts."""
    rng = np.random.default_rng(seed)
    n_classes = profiles_b.shape[1]
    return float(np.mean([match_experts(profiles_a, profiles_b[:, rng.permutation(n_classes)])[1]
                          for _ in range(permutations)]))


def agreement(overlap: float, chance: float) -> float:
    """Chance-corrected overlap, as Cohen's kappa: (overlap - chance) / (1 - chance). 1 = the same
    specialisation up to the numbering of the experts, 0 = no more alike than two unrelated
    specialisations of the same sharpness, NaN when chance is 1 (a routing that ignores the
    class has no specialisation to compare)."""
    return (overlap - chance) / (1.0 - chance) if 1.0 - chance > 1e-9 else float("nan")


def seed_agreement(routing: pd.DataFrame, split: str = "test", value: str = "top1",
                   permutations: int = 100) -> pd.DataFrame:
    """Whether the seeds of a configuration divide the classes among their experts in the same
    way: for every pair of seeds, experts matched by class profile (match_experts), then

    - ``overlap``: matched profile_overlap (1 = identical specialisation);
    - ``chance``: chance_overlap, the overlap of unrelated specialisations of the same sharpness
      (the reference: a random numbering of the experts is what matching removes, not this);
    - ``agreement``: (overlap - chance) / (1 - chance), 1 = identical, 0 = unrelated.

    routing: routing.csv rows with logs.read_all's identity columns. One row per (grid, dataset,
    label): seeds, pairs, and the mean and std (ddof=1) over pairs of each number."""
    rows = []
    for key, config in routing[routing.split == split].groupby(CONFIG_KEYS, sort=False):
        profiles = {seed: class_profiles(run, value) for seed, run in config.groupby("seed")}
        pairs = []
        for a, b in itertools.combinations(sorted(profiles), 2):
            overlap = match_experts(profiles[a], profiles[b])[1]
            chance = chance_overlap(profiles[a], profiles[b], permutations)
            pairs.append((overlap, chance, agreement(overlap, chance)))
        numbers = np.array(pairs, dtype=np.float64).reshape(-1, 3)                     # (pairs, 3)
        row = dict(zip(CONFIG_KEYS, key), seeds=len(profiles), pairs=len(pairs))
        for column, name in enumerate(("overlap", "chance", "agreement")):
            row[f"{name}_mean"] = numbers[:, column].mean() if len(pairs) else float("nan")
            row[f"{name}_std"] = numbers[:, column].std(ddof=1) if len(pairs) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def diagonal_order(profiles: np.ndarray) -> np.ndarray:
    """Experts in the order of the class they take the largest share of (ties: the larger share
    first), so that a heatmap of a specialised routing reads along its diagonal. (E, C) -> (E,)"""
    favourite = profiles.argmax(axis=1)                                                # (E,)
    return np.lexsort((-profiles.max(axis=1), favourite))
