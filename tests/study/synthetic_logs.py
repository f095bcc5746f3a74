"""Synthetic rows of the run logs (metrics.csv, experts.csv, routing.csv) and gates, for the study's tests."""
import numpy as np
import pandas as pd


def metrics_of(curves: dict) -> pd.DataFrame:
    rows = []
    for (label, seed), accs in curves.items():
        for epoch, acc in enumerate(accs, start=1):
            rows.append({"grid": "g", "dataset": "d", "label": label, "seed": seed, "epoch": epoch, "val_acc": acc,
                         "wall_time_s": 10.0 * epoch + seed})
    return pd.DataFrame(rows)


def lm_metrics_of(curves: dict) -> pd.DataFrame:
    rows = []
    for (label, seed), bpbs in curves.items():
        for epoch, bpb in enumerate(bpbs, start=1):
            rows.append({"grid": "lm", "dataset": "python-stdlib", "label": label, "seed": seed, "epoch": epoch,
                         "step": 100 * epoch, "val_bpb": bpb, "val_acc": 0.5, "wall_time_s": 7.0 * epoch})
    return pd.DataFrame(rows)


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



def expert_rows(seed: int, loads: list[float], losses: list[float], steps=(40, 80, 120)) -> pd.DataFrame:
    """experts.csv rows of one run: a test row per expert (its load) and train_batch rows whose
    loss is constant per expert."""
    rows = [{"split": "test", "step": steps[-1], "expert": e, "frac_routed": load, "mean_gate": load,
             "loss_routed": np.nan} for e, load in enumerate(loads)]
    rows += [{"split": "train_batch", "step": step, "expert": e, "frac_routed": load, "mean_gate": load,
              "loss_routed": loss if load > 0 else np.nan}
             for step in steps for e, (load, loss) in enumerate(zip(loads, losses))]
    return pd.DataFrame(rows).assign(grid="g", dataset="d", label="top1", seed=seed, run=f"r{seed}")



def routing_rows(profiles_counts: np.ndarray, seed: int, label: str = "top1") -> pd.DataFrame:
    """routing.csv test rows of one run from an (E, C) table of top-1 counts."""
    experts, classes = np.indices(profiles_counts.shape)
    return pd.DataFrame({"split": "test", "expert": experts.ravel(), "class": classes.ravel(),
                         "count": profiles_counts.ravel(), "gate_mass": profiles_counts.ravel() * 0.5,
                         "top1": profiles_counts.ravel()}).assign(grid="g", dataset="d", label=label, seed=seed,
                                                                   run=f"{label}-s{seed}", epoch=1, step=10)
