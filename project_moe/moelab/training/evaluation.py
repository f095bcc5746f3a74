"""Evaluation of a classifier on a split, with the per-expert and per-class routing tables.

Legend: N samples, E experts, K classes.

Every table is built from sums over the batches, so that a split evaluated in shards (one
per process, ``reduce`` summing over them) gives the tables of the whole split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import stats
from ..layers.capacity import selection_bias
from ..layers.moe import MoEOutput
from ..models.classifier import MoEClassifier
from ..models.output import ModelOutput
from ..models.transformer import TokenModel
from ..models.vit import ViTClassifier
from .tasks import CLASSIFICATION

SAMPLES_COLUMNS = ["index", "class", "predicted", "top1_expert", "top1_weight", "experts_used", "gate_entropy"]
LAYER_COLUMNS = ["layer", "expert", "n_tokens", "n_routed", "n_dropped", "frac_routed", "mean_gate", "selection_bias"]
KIND_COLUMNS = ["layer", "expert", "kind", "count", "gate_mass", "top1"]
TEXT_COLUMNS = ["index", "byte", "kind", "layer", "top1_expert", "top1_weight", "experts_used"]
PATCH_COLUMNS = ["index", "class", "predicted", "layer", "patch", "row", "col", "top1_expert", "top1_weight",
                 "experts_used"]
NODE_COLUMNS = ["index", "class", "predicted", "layer", "node", "kind", "top1_expert", "top1_weight", "experts_used"]


@dataclass
class SplitResult:
    loss: float
    acc: float
    n: int
    expert_rows: list[dict] = field(default_factory=list)    # one per expert (MoE only)
    routing_rows: list[dict] = field(default_factory=list)   # one per (expert, class) (MoE only)
    load_cv: float = float("nan")
    gate_entropy: float = float("nan")
    dropped: float = float("nan")                             # share of chosen assignments dropped for capacity
    class_expert: dict[str, Tensor] | None = None             # (E, K) tables
    rmse: float = float("nan")                                # regression, in the units of the table
    mae: float = float("nan")
    r2: float = float("nan")
    layer_rows: list[dict] = field(default_factory=list)     # one per (MoE block, expert) (ViT, gpt)
    kind_rows: list[dict] = field(default_factory=list)      # one per (MoE block, expert, byte kind) (language model)

    @property
    def score(self) -> float:
        """What validation maximises: accuracy, or R^2 for a regression, or minus the loss where
        R^2 is undefined (a validation split of one row, or of equal targets)."""
        if math.isfinite(self.acc):
            return self.acc
        return self.r2 if math.isfinite(self.r2) else -self.loss


@torch.no_grad()
def evaluate(model, batches, num_classes: int, detailed: bool = True, reduce=None,
             tta_flip: bool = False, kinds: int = 0, task=CLASSIFICATION) -> SplitResult:
    """Loss and accuracy over ``batches`` (an iterable of (x, y)); for an MoE with
    ``detailed``, also every expert's own loss on all samples and on its routed ones.
    ``tta_flip``: loss and accuracy of the mean of the logits of each image and of its mirror
    image (the routing statistics stay those of the images as they are).
    ``reduce`` sums a tensor over the processes that evaluate shards of the same batches
    (None: this process evaluates whole batches).
    A language model's batches are (x, y, kinds), y and kinds (B, T): its loss and accuracy are
    per predicted byte, and with ``kinds`` (the number of byte kinds) each MoE block's routing
    is also tabulated per kind of input byte (kind_rows); a graph's are (x, y, kinds), kinds
    (B, N) of its nodes, -1 on padding, tabulated per node kind.
    ``task`` (tasks.py) gives the loss, the hits and the groups of the routing tables: classes,
    or for a regression the target bins (``num_classes`` of them), with RMSE, MAE and R^2."""
    was_training = model.training
    model.eval()
    # The mixture routes whole samples (per-expert tables); a token model its MoE blocks' tokens.
    routes = bool(model.routers())
    is_moe, routes_tokens = routes and not model.routes_tokens, routes and model.routes_tokens
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    count = 0
    totals: dict[str, Tensor] = {}
    for x, y, *groups in batches:
        y = y.reshape(-1)                        # (B,), or (B*T,) next bytes of a language model
        if is_moe and detailed:
            features = model.expert_input(x)
            output = model.classify_features(features)
            _accumulate(totals, _moe_batch_sums(model, features, output.mixture, y, num_classes, task))
        else:
            output = model(x)
            if routes_tokens and detailed:
                _accumulate(totals, _token_batch_sums(output, groups[0].reshape(-1) if kinds and groups else None,
                                                      kinds))
        if tta_flip:
            output = ModelOutput((output.logits + model(x.flip(-1)).logits) / 2)
        loss_sum += task.loss(output, y, reduction="sum")
        correct += task.correct(output, y)
        _accumulate(totals, task.split_sums(output, y))
        count += y.shape[0]
    model.train(was_training)
    totals = reduce_sums({**totals, "loss_sum": loss_sum, "correct": correct,
                          "count": torch.tensor(float(count), dtype=torch.float64, device=device)}, reduce)
    loss_sum, correct, count = totals.pop("loss_sum"), totals.pop("correct"), int(totals.pop("count").item())
    result = SplitResult(loss=(loss_sum / max(count, 1)).item(), acc=(correct / max(count, 1)).item(), n=count)
    if "sq_error" in totals:
        sums = {name: totals.pop(name).item() for name in ("sq_error", "abs_error", "y_sum", "y_sq_sum")}
        for name, value in task.metrics(sums, count).items():
            setattr(result, name, value)
    if totals and routes_tokens:
        biases = [selection_bias(model.blocks[index].ffn) for index in model.moe_blocks]
        _fill_layers(result, totals, model.moe_blocks, biases)
    elif totals:
        _fill_routing(result, totals, count, selection_bias(model.routers()[0]))
    return result


def _token_batch_sums(output, kinds: Tensor | None = None, num_kinds: int = 0) -> dict[str, Tensor]:
    """Per MoE block: tokens routed to each expert, gate mass, and summed gate entropy; with
    ``kinds`` (N,), the (L, E, kinds) tables of stats.class_expert_matrix per kind of token."""
    weights = torch.stack([r.weights for r in output.routings])              # (L, N, E)
    tables = {}
    if kinds is not None:
        kinds = kinds[kinds >= 0]         # a graph batch's padding (-1) is not routed: real nodes, in order
        per_block = [stats.class_expert_matrix(w, kinds, num_kinds) for w in weights]
        tables = {f"kind_{name}": torch.stack([t[name] for t in per_block]).double() for name in per_block[0]}
    return {**tables,"tokens": torch.tensor(float(weights.shape[1]), device=weights.device),
            "routed": stats.routed_mask(weights).sum(dim=1).double(),         # (L, E)
            "dropped": output.dropped_counts().double(),                      # (L, E)
            "gate": weights.sum(dim=1).double(),                              # (L, E)
            "entropy_sum": torch.stack([stats.mean_gate_entropy(w) for w in weights]).double() * weights.shape[1]}


def _fill_layers(result: SplitResult, totals: dict[str, Tensor], blocks: list[int], biases: list[list[float]]) -> None:
    t = {name: value.double().cpu() for name, value in totals.items()}
    tokens = t["tokens"].item()
    for layer, block in enumerate(blocks):
        for e in range(t["routed"].shape[1]):
            routed = t["routed"][layer, e].item()
            result.layer_rows.append({"layer": block, "expert": e, "n_tokens": int(tokens), "n_routed": int(routed),
                                      "n_dropped": int(t["dropped"][layer, e].item()),
                                      "selection_bias": biases[layer][e],
                                      "frac_routed": routed / tokens, "mean_gate": t["gate"][layer, e].item() / tokens})
    if "kind_count" in t:
        for layer, block in enumerate(blocks):
            for e in range(t["routed"].shape[1]):
                for kind in range(t["kind_count"].shape[2]):
                    result.kind_rows.append({"layer": block, "expert": e, "kind": kind,
                                             "count": int(t["kind_count"][layer, e, kind].item()),
                                             "gate_mass": t["kind_gate_mass"][layer, e, kind].item(),
                                             "top1": int(t["kind_top1"][layer, e, kind].item())})
    result.load_cv = stats.load_cv(t["routed"]).mean().item()
    result.gate_entropy = (t["entropy_sum"] / tokens).mean().item()
    result.dropped = stats.dropped_share(t["routed"], t["dropped"]).item()


def _moe_batch_sums(model: MoEClassifier, features: Tensor, output: MoEOutput, y: Tensor, num_classes: int,
                    task=CLASSIFICATION) -> dict[str, Tensor]:
    """The mixture's tables of one batch; ``output``: its MoE layer's record (ModelOutput.mixture)."""
    weights = output.routing.weights                                          # (N, E)
    all_logits = model.moe.all_expert_outputs(features)                       # (E, N, W)
    every = torch.ones_like(weights, dtype=torch.bool)
    on_all = task.expert_sums(all_logits, y, every)
    on_routed = task.expert_sums(all_logits, y, stats.routed_mask(weights))
    tables = stats.class_expert_matrix(weights, task.group_of(y), num_classes)
    return {
        "routed": on_routed["n"], "gate": weights.sum(dim=0), "dropped": output.dropped_counts(),
        "loss_routed": on_routed["loss"], "correct_routed": on_routed["correct"],
        "loss_all": on_all["loss"], "correct_all": on_all["correct"],
        "entropy_sum": stats.mean_gate_entropy(weights) * y.shape[0],
        **{f"table_{name}": table for name, table in tables.items()},
    }


def _accumulate(totals: dict[str, Tensor], batch: dict[str, Tensor]) -> None:
    for name, value in batch.items():
        totals[name] = totals[name] + value if name in totals else value.clone()


def reduce_sums(sums: dict[str, Tensor], reduce) -> dict[str, Tensor]:
    """``reduce`` applied to every tensor of ``sums`` at once (one collective), float64."""
    if reduce is None or not sums:
        return sums
    flat = reduce(torch.cat([value.double().reshape(-1) for value in sums.values()]))
    out, start = {}, 0
    for name, value in sums.items():
        out[name] = flat[start:start + value.numel()].view(value.shape)
        start += value.numel()
    return out


def _fill_routing(result: SplitResult, totals: dict[str, Tensor], count: int, bias: list[float]) -> None:
    t = {name: value.double().cpu() for name, value in totals.items()}
    num_experts = t["routed"].shape[0]
    for e in range(num_experts):
        routed = t["routed"][e].item()
        result.expert_rows.append({
            "expert": e, "n_samples": count, "n_routed": int(routed), "n_dropped": int(t["dropped"][e].item()),
            "frac_routed": routed / count, "mean_gate": t["gate"][e].item() / count,
            "loss_routed": t["loss_routed"][e].item() / routed if routed else float("nan"),
            "acc_routed": t["correct_routed"][e].item() / routed if routed else float("nan"),
            "loss_all": t["loss_all"][e].item() / count, "acc_all": t["correct_all"][e].item() / count,
            "selection_bias": bias[e],
        })
    tables = {name.removeprefix("table_"): t[name] for name in t if name.startswith("table_")}
    num_classes = tables["count"].shape[1]
    for e in range(num_experts):
        for c in range(num_classes):
            result.routing_rows.append({"expert": e, "class": c, "count": int(tables["count"][e, c].item()),
                                        "gate_mass": tables["gate_mass"][e, c].item(),
                                        "top1": int(tables["top1"][e, c].item())})
    result.load_cv = stats.load_cv(t["routed"]).item()
    result.gate_entropy = t["entropy_sum"].item() / count
    result.dropped = stats.dropped_share(t["routed"], t["dropped"]).item()
    result.class_expert = tables


def train_batch_expert_rows(output: MoEOutput, y: Tensor, num_experts: int, reduce=None, bias=None,
                            task=CLASSIFICATION) -> list[dict]:
    """Per-expert rows for one training batch, from the assignments already computed
    (no extra forward pass, hence no loss over all samples): ``output``, the mixture's MoE layer
    record (ModelOutput.mixture). ``bias``: the router's selection bias per expert, as logged."""
    with torch.no_grad():
        target = y[output.sample_index]                                        # (M,)
        loss, correct = task.assignment_losses(output.expert_logits, target)
        routed = torch.bincount(output.expert_index, minlength=num_experts).double()
        loss_sum = torch.zeros(num_experts, dtype=torch.float64, device=y.device).index_add_(
            0, output.expert_index, loss.double())
        correct_sum = torch.zeros_like(loss_sum).index_add_(0, output.expert_index, correct)
        gate = output.routing.weights.sum(dim=0).double()
        samples = torch.full_like(gate, float(y.shape[0]))
        dropped = output.dropped_counts().double()
        packed = torch.stack([routed, loss_sum, correct_sum, gate, samples, dropped])  # (6, E): one transfer
        packed = (reduce(packed) if reduce is not None else packed).cpu()
    rows = []
    for e in range(num_experts):
        routed_n, loss_total, correct_total, gate_total, n, dropped_n = packed[:, e].tolist()
        rows.append({"expert": e, "n_samples": int(n), "n_routed": int(routed_n), "n_dropped": int(dropped_n),
                     "frac_routed": routed_n / n,
                     "mean_gate": gate_total / n,
                     "loss_routed": loss_total / routed_n if routed_n else float("nan"),
                     "acc_routed": correct_total / routed_n if routed_n else float("nan"),
                     "loss_all": float("nan"), "acc_all": float("nan"),
                     "selection_bias": bias[e] if bias is not None else float("nan")})
    return rows


def _no_gather(rows: Tensor) -> Tensor:
    return rows


@torch.no_grad()
def sample_routing(model: MoEClassifier, batches, gather=_no_gather, task=CLASSIFICATION) -> dict[str, Tensor]:
    """Routing of every sample of a split, in the evaluation batches, so that batch-dependent
    routers see the same batches as in evaluation: (N,) columns ``class``, ``predicted``,
    ``top1_expert``, ``experts_used`` (long), ``top1_weight``, ``gate_entropy`` (float64), and the
    (N, E) gate ``weights`` (float32). ``gather`` concatenates the rows of processes that route
    shards of the same batches."""
    was_training = model.training
    model.eval()
    tables = []
    for x, y in batches:
        output = model(x)
        weights = output.routings[0].weights                                   # (n, E)
        top_weight, top_expert = weights.max(dim=1)
        columns = torch.stack([task.group_of(y), task.predicted_group(output), top_expert,
                               stats.routed_mask(weights).sum(dim=1)]).t().double()   # (n, 4)
        entropy = stats.gate_entropy(weights)                                  # (n,)
        tables.append(gather(torch.cat([columns, top_weight.double().unsqueeze(1), entropy.double().unsqueeze(1),
                                        weights.double()], dim=1)).cpu())      # (N, 6 + E)
    model.train(was_training)
    table = torch.cat(tables)
    whole = table[:, :4].long()
    return {"class": whole[:, 0], "predicted": whole[:, 1], "top1_expert": whole[:, 2], "experts_used": whole[:, 3],
            "top1_weight": table[:, 4], "gate_entropy": table[:, 5], "weights": table[:, 6:].float()}


def sample_rows(routing: dict[str, Tensor], limit: int) -> list[dict]:
    """The first ``limit`` samples of sample_routing as rows of test_samples.csv (SAMPLES_COLUMNS)."""
    columns = [name for name in SAMPLES_COLUMNS if name != "index"]
    values = zip(*(routing[name][:limit].tolist() for name in columns))
    return [{"index": i, **dict(zip(columns, row))} for i, row in enumerate(values)]


@torch.no_grad()
def patch_routing(model: ViTClassifier, batches, limit: int, gather=_no_gather) -> list[dict]:
    """Top-1 expert of every patch of the first ``limit`` images (at most one evaluation
    batch, routed as in evaluation), in every MoE block. Image ``index`` is the index in
    the split, so the pixels are ``split.images[index]``. ``gather`` as in sample_routing."""
    was_training = model.training
    model.eval()
    x, y = next(iter(batches))
    output = model(x)
    images = gather(torch.stack([y, output.logits.argmax(dim=1)], dim=1)).cpu()   # (B, 2)
    take = min(limit, images.shape[0])
    labels, predicted = images[:take, 0].tolist(), images[:take, 1].tolist()
    columns = model.grid[1]
    rows = []
    for layer, routing in zip(model.moe_blocks, output.routings):
        weights = routing.weights.view(x.shape[0], output.tokens, -1)         # (b, T, E)
        top_weight, top_expert = weights.max(dim=-1)                          # (b, T)
        used = stats.routed_mask(weights).sum(dim=-1)                         # (b, T)
        table = gather(torch.stack([top_expert.double(), used.double(), top_weight.double()], dim=1))  # (B, 3, T)
        table = table[:take].cpu()
        for image in range(take):
            experts_of, used_of, weight_of = table[image].tolist()
            for patch, (expert, count, weight) in enumerate(zip(experts_of, used_of, weight_of)):
                rows.append({"index": image, "class": labels[image], "predicted": predicted[image],
                             "layer": layer, "patch": patch, "row": patch // columns, "col": patch % columns,
                             "top1_expert": int(expert), "top1_weight": weight, "experts_used": int(count)})
    model.train(was_training)
    return rows


@torch.no_grad()
def node_routing(model: TokenModel, batches, limit: int, gather=_no_gather) -> list[dict]:
    """Top-1 expert of every node of the first ``limit`` graphs of a split (at most one evaluation
    batch, routed as in evaluation), in every MoE block. Graph ``index`` is the index in the split,
    ``node`` the node's number in its graph as the split stores it, ``kind`` its kind (the routing
    tables'). ``gather`` as in sample_routing."""
    was_training = model.training
    model.eval()
    x, y, kinds = next(iter(batches))                                         # kinds (b, N), -1 on padding
    output = model(x)
    real = kinds >= 0                                                         # (b, N)
    graphs = gather(torch.stack([y, output.logits.argmax(dim=1)], dim=1)).cpu()   # (B, 2)
    take = min(limit, graphs.shape[0])
    node_kinds = gather(kinds)[:take].cpu()                                   # (take, N)
    rows = []
    for layer, routing in zip(model.moe_blocks, output.routings):
        top_weight, top_expert = routing.weights.max(dim=-1)                  # (M,) the real nodes, in order
        used = stats.routed_mask(routing.weights).sum(dim=-1)                 # (M,)
        table = torch.zeros(real.shape[0], 3, real.shape[1], dtype=torch.float64, device=real.device)  # (b, 3, N)
        table.permute(1, 0, 2)[:, real] = torch.stack([top_expert.double(), used.double(), top_weight.double()])
        table = gather(table)[:take].cpu()                                    # (take, 3, N)
        for graph in range(take):
            for node in torch.nonzero(node_kinds[graph] >= 0).flatten().tolist():
                expert, count, weight = table[graph, :, node].tolist()
                rows.append({"index": graph, "class": int(graphs[graph, 0]), "predicted": int(graphs[graph, 1]),
                             "layer": layer, "node": node, "kind": int(node_kinds[graph, node]),
                             "top1_expert": int(expert), "top1_weight": weight, "experts_used": int(count)})
    model.train(was_training)
    return rows


@torch.no_grad()
def text_routing(model: TokenModel, batches, limit: int, gather=_no_gather) -> list[dict]:
    """Top-1 expert of every byte of the first ``limit`` bytes of a split (consecutive windows
    of the first evaluation batch, routed as in evaluation), in every MoE block; ``index`` is
    the byte's position in the split's stream. ``gather`` as in sample_routing."""
    was_training = model.training
    model.eval()
    x, _, kinds = next(iter(batches))
    output = model(x)
    take = min(limit, gather(x).numel())
    inputs = torch.stack([gather(x).reshape(-1), gather(kinds).reshape(-1)]).cpu()[:, :take]   # (2, n)
    rows = []
    for layer, routing in zip(model.moe_blocks, output.routings):
        weights = routing.weights                                              # (b*T, E)
        top_weight, top_expert = weights.max(dim=-1)
        used = stats.routed_mask(weights).sum(dim=-1)
        table = gather(torch.stack([top_expert.double(), used.double(), top_weight.double()], dim=1)).cpu()[:take]
        for index, ((expert, count, weight), byte, kind) in enumerate(zip(table.tolist(), *inputs.tolist())):
            rows.append({"index": index, "byte": byte, "kind": kind, "layer": layer, "top1_expert": int(expert),
                         "top1_weight": weight, "experts_used": int(count)})
    model.train(was_training)
    return rows
