"""The test tables of a run on a table (schema in docs/run-files.md): every test row's target,
prediction, gate and each expert's own prediction (test_predictions.csv), and the gate's top-1
expert over a grid of the plane of the two principal directions of the training features
(gate_grid.csv), from which the figures draw how the gate partitions the input space.

Legend: N test rows, F features, E experts, W expert output width, P grid points.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.tables import TableDataset
from ..models.classifier import MoEClassifier

GRID_SIDE = 40          # grid points per axis of gate_grid.csv
GRID_MARGIN = 0.1       # the grid extends the test rows' range by this share on every side


def _expert_predictions(all_out: torch.Tensor, task, dataset: TableDataset) -> np.ndarray:
    """(E, N, W) expert outputs -> (E, N): each expert's predicted class, or mean in table units."""
    if task.name == "regression":
        return dataset.to_original(all_out[..., 0].double().cpu().numpy())
    return all_out.argmax(dim=-1).cpu().numpy()


@torch.no_grad()
def table_routing(model, dataset: TableDataset, task, batches, device: torch.device) -> tuple[list[dict], list[dict]]:
    """(rows of test_predictions.csv, rows of gate_grid.csv; empty for a dense model). ``batches``:
    the test split's evaluation batches (x, y) in order, so that a router that depends on its
    batch (expert choice, capacities) routes as it did when the test scores were computed."""
    was_training = model.training
    model.eval()
    parts = {"plane": [], "predicted": [], "weights": [], "experts": []}
    moe = isinstance(model, MoEClassifier)
    for x, _ in batches:
        output = model(x)
        parts["plane"].append((x.double().cpu().numpy() - dataset.pca_mean) @ dataset.pca_components.T)   # (b, 2)
        if task.name == "regression":
            parts["predicted"].append(dataset.to_original(task.prediction(output).double().cpu().numpy()))
        else:
            parts["predicted"].append(output.logits.argmax(dim=1).cpu().numpy())
        if moe:
            parts["weights"].append(output.routings[0].weights.float().cpu())                             # (b, E)
            parts["experts"].append(_expert_predictions(model.moe.all_expert_outputs(x), task, dataset))  # (E, b)
    plane, predicted = np.concatenate(parts["plane"]), np.concatenate(parts["predicted"])
    rows_of = dataset.test.rows.numpy()
    target = dataset.raw_targets[rows_of] if task.name == "regression" else dataset.test.targets.numpy()
    rows = [{"index": i, "row": int(r), "target": t, "prediction": p, "pc1": a, "pc2": b}
            for i, (r, t, p, (a, b)) in enumerate(zip(rows_of.tolist(), target.tolist(), predicted.tolist(),
                                                      plane.tolist()))]
    grid = []
    if moe:
        weights, experts = torch.cat(parts["weights"]), np.concatenate(parts["experts"], axis=1)
        top_weight, top_expert = weights.max(dim=1)
        for i, row in enumerate(rows):
            row.update({"top1_expert": int(top_expert[i]), "top1_weight": float(top_weight[i]),
                        **{f"gate_{e}": float(weights[i, e]) for e in range(weights.shape[1])},
                        **{f"expert_{e}": experts[e, i].item() for e in range(weights.shape[1])}})
        grid = _gate_grid(model, dataset, plane, device)
    model.train(was_training)
    return rows, grid


def _gate_grid(model: MoEClassifier, dataset: TableDataset, plane: np.ndarray, device) -> list[dict]:
    """The gate's most probable expert at every point of a grid over the principal plane (the
    points mapped back to feature space as mean + u * pc1 + v * pc2)."""
    low, high = plane.min(axis=0), plane.max(axis=0)
    pad = GRID_MARGIN * np.maximum(high - low, 1e-6)
    u, v = (np.linspace(low[k] - pad[k], high[k] + pad[k], GRID_SIDE) for k in range(2))
    uu, vv = np.meshgrid(u, v, indexing="xy")
    points = np.stack([uu.ravel(), vv.ravel()], axis=1)                         # (P, 2)
    features = dataset.pca_mean + points @ dataset.pca_components               # (P, F)
    router_in = model.expert_input(torch.as_tensor(features, dtype=torch.float32, device=device))
    probs = model.moe.router(router_in.flatten(1)).probs.float().cpu()          # (P, E)
    top_prob, top_expert = probs.max(dim=1)
    return [{"pc1": round(a, 4), "pc2": round(b, 4), "top1_expert": int(e), "top1_prob": round(float(p), 4)}
            for (a, b), e, p in zip(points.tolist(), top_expert.tolist(), top_prob.tolist())]
