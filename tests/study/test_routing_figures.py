"""moelab/study/routing_figures.py: the routing figures drawn from synthetic logs."""
import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from moelab.study import routing_figures

from .synthetic_logs import C, E, expert_rows, routing_rows, top_k_gates


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
