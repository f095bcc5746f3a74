"""The study's grids: named lists of train.py runs (one configuration x several seeds).

``python sweep.py --list`` prints them; sweep.py runs them (study/sweep.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from ..training.config import RESUMABLE_DIFFERENCES, parse_args
from ..training.provenance import DATA_DIR_TOKEN
from . import logs

SEEDS = (0, 1, 2)


@functools.lru_cache(maxsize=None)
def _computing_settings(dataset: str, fold: int | None, flags: str) -> dict:
    """The resolved train.py settings of a configuration that change what it computes (the
    RESUMABLE_DIFFERENCES and the run name left out), for seed 0: parsed once per configuration,
    whatever the number of seeds (the seed is one setting, set by RunSpec.key)."""
    argv = RunSpec("", "", json.loads(flags), 0, dataset, fold).argv(DATA_DIR_TOKEN)
    settings = dataclasses.asdict(parse_args(argv))
    return {k: v for k, v in settings.items() if k not in RESUMABLE_DIFFERENCES | {"run_name"}}


@dataclass
class RunSpec:
    grid: str          # which study the run belongs to
    label: str         # the configuration, shared by its seeds
    flags: dict        # train.py flags (without dashes), values as strings or numbers
    seed: int = 0
    dataset: str = "mnist"
    fold: int | None = None   # a table's test fold (--fold)

    @property
    def name(self) -> str:
        fold = "" if self.fold is None else f"-f{self.fold}"
        return f"{self.dataset_tag}-{self.label}{fold}-s{self.seed}"

    @cached_property
    def key(self) -> str:
        """The run key: every train.py setting that changes what the run computes, defaults
        included (RESUMABLE_DIFFERENCES and the run name left out). Runs of several grids with
        one key are one run, trained once (owners)."""
        if self.reference:
            return json.dumps({"reference": self.reference, "dataset": self.dataset, "seed": self.seed,
                               "fold": self.fold, **self.flags}, sort_keys=True)
        settings = _computing_settings(self.dataset, self.fold, json.dumps(self.flags, sort_keys=True))
        return json.dumps({**settings, "seed": self.seed}, sort_keys=True)

    @property
    def reference(self) -> str | None:
        """A scikit-learn reference model (references.py) instead of a train.py run."""
        return self.flags.get("reference")

    @property
    def dataset_tag(self) -> str:
        return logs.dataset_tag(self.dataset)

    def argv(self, data_dir: str | None) -> list[str]:
        dataset = self.dataset.format(data_dir=data_dir or "data")
        args = ["--dataset", dataset, "--seed", str(self.seed)]
        if self.fold is not None:
            args += ["--fold", str(self.fold)]
        for key, value in self.flags.items():
            flag = f"--{key.replace('_', '-')}"
            if isinstance(value, bool):   # a switch: present or absent
                args += [flag] if value else []
            else:
                args += [flag, str(value)]
        return args


MNIST_MOE = dict(experts=8, gating="hard", expert_hidden=64, balance_coef=0.1)
CIFAR = "folder:{data_dir}/cifar10-jpeg"
CIFAR_HEAD = dict(trunk="cnn", trunk_channels=16, experts=8, expert_hidden=64, balance_coef=0.1, epochs=5)


# A fast CIFAR-10 recipe on the residual trunk (docs/study.md, "The CIFAR-10 recipe"), in the manner of the
# fast-training literature: SGD with Nesterov momentum, a one-cycle schedule, label smoothing,
# crop + flip augmentation and mirrored test images.
CIFAR_RECIPE = dict(trunk="resnet", trunk_channels=16, channels_last=True, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="onecycle", warmup_fraction=0.25, label_smoothing=0.2, tta_flip=True, batch_size=256)


CIFAR_RECIPE_EPOCHS = 7


# The classifier heads of Rokah et al. 2026 (arXiv 2601.15021) on that trunk: 8 experts of width
# 64 (their 512 x 0.125) with dropout 0.1; soft gating balanced by KL(mean gate || uniform),
# noisy top-2 by Shazeer's importance + load loss (their 0.2); the dense head one MLP of the MoE
# head's total parameters.
PAPER_HEADS = {"dense": dict(model="dense", dense_match="params"),
               "soft": dict(gating="soft", kl_uniform_coef=0.1),
               "noisy-top2": dict(gating="noisy-topk", top_k=2, cv_coef=0.2)}


def grid_cifar_heads(grid: str, epochs: int) -> list[RunSpec]:
    """Dense, soft-MoE and sparse-MoE classifier heads trained end to end with the residual trunk
    under the CIFAR-10 recipe; the weights are kept for ``analysis.py sharpness``."""
    base = dict(CIFAR_RECIPE, experts=8, expert_hidden=64, dropout=0.1, balance_coef=0.0, epochs=epochs)
    return [RunSpec(grid, label, dict(base, **flags), dataset=CIFAR) for label, flags in PAPER_HEADS.items()]


def grid_moe_vs_dense(grid: str, epochs: int, datasets=("mnist", "fashion-mnist")) -> list[RunSpec]:
    runs = []
    for dataset in datasets:
        base = dict(MNIST_MOE, epochs=epochs)
        runs += [RunSpec(grid, "moe-hard", base, dataset=dataset),
                 RunSpec(grid, "moe-top2", dict(base, gating="topk", top_k=2), dataset=dataset),
                 RunSpec(grid, "dense-params", dict(base, model="dense", dense_match="params"),
                         dataset=dataset),
                 RunSpec(grid, "dense-active", dict(base, model="dense", dense_match="active"),
                         dataset=dataset),
                 # the dense network of the top-2 model's active size (dense-active is the top-1 model's)
                 RunSpec(grid, "dense-active-top2", dict(base, gating="topk", top_k=2, model="dense",
                                                         dense_match="active"), dataset=dataset)]
    return runs


def grid_cifar(grid: str, epochs: int) -> list[RunSpec]:
    base = dict(CIFAR_HEAD, epochs=epochs)
    return [RunSpec(grid, "moe-hard", base, dataset=CIFAR),
            RunSpec(grid, "moe-top2", dict(base, gating="topk", top_k=2), dataset=CIFAR),
            RunSpec(grid, "dense-params", dict(base, model="dense", dense_match="params"), dataset=CIFAR),
            RunSpec(grid, "dense-active", dict(base, model="dense", dense_match="active"), dataset=CIFAR)]


def grid_experts(grid: str, epochs: int, counts=(1, 2, 4, 8, 16)) -> list[RunSpec]:
    """E at a fixed total budget (E x hidden = 512) and at a fixed expert size (hidden 64)."""
    runs = []
    for e in counts:
        base = dict(MNIST_MOE, experts=e, epochs=epochs)
        runs.append(RunSpec(grid, f"budget-e{e}", dict(base, expert_hidden=512 // e)))
        runs.append(RunSpec(grid, f"per-expert-e{e}", dict(base, expert_hidden=64)))
    return runs


def grid_gating(grid: str, epochs: int, datasets=("mnist", "fashion-mnist")) -> list[RunSpec]:
    routers = {"soft": {}, "hard": {}, "top2": dict(gating="topk", top_k=2),
               "noisy-top2": dict(gating="noisy-topk", top_k=2), "gumbel-top1": dict(gating="gumbel", top_k=1),
               "expert-choice": dict(gating="expert-choice", top_k=1),
               "expert-choice-2": dict(gating="expert-choice", top_k=2)}
    runs = []
    for dataset in datasets:
        for label, flags in routers.items():
            runs.append(RunSpec(grid, label, {**MNIST_MOE, "gating": label, "epochs": epochs, **flags},
                                dataset=dataset))
    return runs


def grid_regularisation(grid: str, epochs: int) -> list[RunSpec]:
    none = dict(MNIST_MOE, balance_coef=0.0, epochs=epochs)
    variants = {"none": {}, "dropout": dict(dropout=0.3), "entropy+": dict(entropy_coef=0.05),
                "entropy-": dict(entropy_coef=-0.05), "balance": dict(balance_coef=0.1),
                "cv": dict(cv_coef=0.1), "z-loss": dict(z_coef=1e-3), "kl-uniform": dict(kl_uniform_coef=0.1)}
    return [RunSpec(grid, label, dict(none, **flags)) for label, flags in variants.items()]


def grid_regularisation_balanced(grid: str, epochs: int) -> list[RunSpec]:
    """Dropout, gate entropy (both signs) and the router z-loss, each at three coefficients, on top
    of the Switch balancing loss (0.1): do they regularise a balanced MoE, not only stop collapse?"""
    base = dict(MNIST_MOE, epochs=epochs)
    variants = {"balance": {}}
    variants |= {f"dropout{p:g}": dict(dropout=p) for p in (0.1, 0.3, 0.5)}
    variants |= {f"entropy{c:+g}": dict(entropy_coef=c) for c in (0.01, 0.05, 0.2, -0.01, -0.05, -0.2)}
    variants |= {f"z{c:g}": dict(z_coef=c) for c in (1e-4, 1e-3, 1e-2)}
    return [RunSpec(grid, label, dict(base, **flags)) for label, flags in variants.items()]


LR_RATES = (3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 3e-2)   # 2 decades around the study's 2e-3 (dense-active peaks at 1e-2)


def grid_lr(grid: str, epochs: int, rates=LR_RATES) -> list[RunSpec]:
    """The learning rate of the MNIST mixture (top-1, top-2) and of its dense baselines, each then
    compared at the rate that does best on validation."""
    models = {"moe-hard": {}, "moe-top2": dict(gating="topk", top_k=2),
              "dense-params": dict(model="dense", dense_match="params"),
              "dense-active": dict(model="dense", dense_match="active"),
              "dense-active-top2": dict(gating="topk", top_k=2, model="dense", dense_match="active")}
    return [RunSpec(grid, f"{name}-lr{lr:g}", dict(MNIST_MOE, epochs=epochs, **flags, lr=lr))
            for name, flags in models.items() for lr in rates]


def split_lr_label(label: str) -> tuple[str, str]:
    """A label of a learning-rate grid as its model and rate: "moe-hard-lr0.003" -> ("moe-hard", "0.003")."""
    model, rate = label.rsplit("-lr", 1)
    return model, rate


def grid_cnn_experts(grid: str, epochs: int) -> list[RunSpec]:
    """Top-1 MoE of small CNN experts on MNIST pixels, against the parameter-matched dense CNN."""
    base = dict(experts=8, gating="hard", expert_type="cnn", expert_channels=32, expert_hidden=128,
                balance_coef=0.1, epochs=epochs)
    return [RunSpec(grid, "moe-hard-cnn", base),
            RunSpec(grid, "dense-params-cnn", dict(base, model="dense", dense_match="params"))]


def grid_cosine(grid: str, epochs: int) -> list[RunSpec]:
    """Linear against cosine router scores (X-MoE), with one or four centroids per expert."""
    scores = {"linear": {}, "cosine": dict(router_score="cosine"),
              "cosine-4c": dict(router_score="cosine", router_centroids=4, centroid_coef=0.1)}
    routers = {"hard": {}, "top2": dict(gating="topk", top_k=2)}
    return [RunSpec(grid, f"{router}-{score}", dict(MNIST_MOE, epochs=epochs, **router_flags, **score_flags))
            for router, router_flags in routers.items() for score, score_flags in scores.items()]


FASHION = "fashion-mnist"
VIT = dict(arch="vit", vit_dim=96, vit_depth=4, vit_heads=3, moe_every=2, experts=8, expert_hidden=192,
           gating="topk", top_k=2, balance_coef=0.05, lr=1e-3)


def grid_vit(grid: str, epochs: int) -> list[RunSpec]:
    """A 4-block ViT with MoE in blocks 2 and 4 (tokens routed) against the same ViT with dense
    MLPs of the MoE's active width; 4x4 patch grids (7-pixel patches on 28x28, 8 on 32x32)."""
    runs = []
    for dataset, patch in ((FASHION, 7), (CIFAR, 8)):
        base = dict(VIT, vit_patch=patch, epochs=epochs)
        runs += [RunSpec(grid, "vit-moe-top2", base, dataset=dataset),
                 RunSpec(grid, "vit-dense-active", dict(base, model="dense", dense_match="active"), dataset=dataset)]
        if dataset == FASHION:
            runs.append(RunSpec(grid, "vit-moe-expert-choice", dict(base, gating="expert-choice"), dataset=dataset))
    return runs


VIT_LR_RATES = (3e-4, 1e-3, 3e-3, 1e-2)          # 1.5 decades around the ViT grids' 1e-3


def grid_lr_vit(grid: str, epochs: int, rates=VIT_LR_RATES) -> list[RunSpec]:
    """The learning rate of the Fashion-MNIST ViT with top-2 MoE blocks and of its dense ViT of equal
    active width (the vit grid's models; their 1e-3 runs are the vit grid's)."""
    base = dict(VIT, vit_patch=7, epochs=epochs)
    models = {"vit-moe-top2": {}, "vit-dense-active": dict(model="dense", dense_match="active")}
    return [RunSpec(grid, f"{name}-lr{lr:g}", dict(base, **flags, lr=lr), dataset=FASHION)
            for name, flags in models.items() for lr in rates]


def grid_sharpness(grid: str, epochs: int) -> list[RunSpec]:
    """Dense, soft and top-k models whose weights are kept for ``analysis.py sharpness``."""
    base = dict(MNIST_MOE, epochs=epochs)
    return [RunSpec(grid, "dense-params", dict(base, model="dense", dense_match="params")),
            RunSpec(grid, "dense-active", dict(base, model="dense", dense_match="active")),
            RunSpec(grid, "soft", dict(base, gating="soft")),
            RunSpec(grid, "top2", dict(base, gating="topk", top_k=2)),
            RunSpec(grid, "hard", base)]


CAPACITY_ROUTERS = {"top1": dict(gating="hard"), "top2": dict(gating="topk", top_k=2)}


def _capacity_variants(grid: str, base: dict, dataset: str) -> list[RunSpec]:
    runs = []
    for router, flags in CAPACITY_ROUTERS.items():
        runs.append(RunSpec(grid, f"{router}-dropless", dict(base, **flags), dataset=dataset))
        runs += [RunSpec(grid, f"{router}-cf{factor:g}-{policy}",
                         dict(base, **flags, capacity_factor=factor, drop_policy=policy), dataset=dataset)
                 for factor in (0.5, 1.0, 1.25, 2.0) for policy in ("position", "priority")]
    return runs


def grid_capacity(grid: str, epochs: int) -> list[RunSpec]:
    """Expert capacity C = ceil(cf N k / E) under top-1 and top-2 token choice, dropping by batch
    position or by router probability, against dropless routing (MNIST mixture)."""
    return _capacity_variants(grid, dict(MNIST_MOE, epochs=epochs), "mnist")


def grid_capacity_vit(grid: str, epochs: int) -> list[RunSpec]:
    """The capacity grid on the Fashion-MNIST ViT (tokens dropped pass through the residual)."""
    return _capacity_variants(grid, dict(VIT, vit_patch=7, epochs=epochs), FASHION)


def grid_shared(grid: str, epochs: int) -> list[RunSpec]:
    """Fine-grained experts (E=8,k=1,h=128 / E=32,k=4,h=32 / E=64,k=8,h=16: the same active and
    total expert width) without and with one shared expert; with it, one routed expert less per
    sample (top-1: half-width experts), so that the active parameters stay the same."""
    shapes = {"e8-k1": (8, 1, 128), "e32-k4": (32, 4, 32), "e64-k8": (64, 8, 16)}
    runs = []
    for label, (experts, k, hidden) in shapes.items():
        base = dict(MNIST_MOE, epochs=epochs, experts=experts, gating="hard" if k == 1 else "topk", top_k=k,
                    expert_hidden=hidden)
        shared = dict(base, shared_experts=1, expert_hidden=hidden // 2) if k == 1 else \
            dict(base, shared_experts=1, top_k=k - 1, gating="hard" if k == 2 else "topk")
        runs += [RunSpec(grid, f"{label}-h{hidden}", base), RunSpec(grid, f"{label}-h{hidden}-shared", shared)]
    return runs


BALANCING = {"none": dict(balance_coef=0.0), "switch-loss": dict(balance_coef=0.1),
             "loss-free": dict(balance_coef=0.0, bias_balance_rate=1e-3),
             "both": dict(balance_coef=0.1, bias_balance_rate=1e-3)}


def grid_balancing(grid: str, epochs: int) -> list[RunSpec]:
    """Top-1 routing balanced by nothing, the Switch loss, loss-free biases (rate 1e-3, as in
    Wang et al. 2024) or both (MNIST mixture)."""
    return [RunSpec(grid, label, dict(MNIST_MOE, epochs=epochs, gating="hard", **flags))
            for label, flags in BALANCING.items()]


def grid_balancing_vit(grid: str, epochs: int) -> list[RunSpec]:
    base = dict(VIT, vit_patch=7, epochs=epochs, gating="hard")
    return [RunSpec(grid, label, dict(base, **flags), dataset=FASHION) for label, flags in BALANCING.items()]


def grid_vit_routers(grid: str, epochs: int) -> list[RunSpec]:
    """Fashion-MNIST ViT (16 tokens): linear, cosine and attention scores under expert choice
    and top-2; Soft MoE with 4 slots per expert (8 x 4 slots = 2 experts' work per token), the
    classic soft gate with quarter-width experts and top-2, all three at the same expert FLOPs."""
    base = dict(VIT, vit_patch=7, epochs=epochs)
    runs = [RunSpec(grid, f"{gating}-{score}", dict(base, gating=gating, router_score=score), dataset=FASHION)
            for gating in ("expert-choice", "topk") for score in ("linear", "cosine", "attention")]
    hidden = VIT["expert_hidden"]
    runs += [RunSpec(grid, "soft-slots-n4", dict(base, gating="soft-slots", slots_per_expert=4),
                     dataset=FASHION),
             RunSpec(grid, "soft-gate-quarter", dict(base, gating="soft", expert_hidden=hidden // 4),
                     dataset=FASHION)]
    return runs


# The validation accuracy whose first epoch measures "how fast" in the convergence grids: a level
# near the end of the curves, so that it separates models that learn at different speeds.
CONVERGENCE_TARGETS = {"cifar10-jpeg": 0.60, "fashion-mnist": 0.88}


def split_convergence_label(label: str) -> tuple[int, str]:
    """A convergence-grid label as (blocks, model): "d6-moe-top2" -> (6, "moe-top2")."""
    depth, model = label.split("-", 1)
    return int(depth.lstrip("d")), model


def grid_vit_convergence(grid: str, epochs: int, depth: int = 6) -> list[RunSpec]:
    """How fast a ViT with MoE in every second block (blocks 2, 4, 6 of 6) learns against the
    dense ViT of equal active FLOPs and the one of equal parameters, expert choice and top-2,
    trained long enough for the validation curves to flatten (CIFAR-10 JPEG and Fashion-MNIST)."""
    runs = []
    for dataset, patch in ((CIFAR, 8), (FASHION, 7)):
        base = dict(VIT, vit_patch=patch, vit_depth=depth, moe_every=2, epochs=epochs)
        runs += [RunSpec(grid, f"d{depth}-moe-expert-choice", dict(base, gating="expert-choice"), dataset=dataset),
                 RunSpec(grid, f"d{depth}-moe-top2", base, dataset=dataset),
                 RunSpec(grid, f"d{depth}-dense-active", dict(base, model="dense", dense_match="active"),
                         dataset=dataset),
                 RunSpec(grid, f"d{depth}-dense-params", dict(base, model="dense", dense_match="params"),
                         dataset=dataset)]
    return runs


@dataclass(frozen=True)
class Grid:
    """A named grid of the study: ``build(name, epochs, **options)`` gives its runs."""

    build: Callable[..., list[RunSpec]]
    epochs: int                                   # of the study's runs
    options: dict = field(default_factory=dict)   # more arguments of ``build``
    keep_weights: bool = False                    # model.pt stays (ignored by git) for analysis.py
    convergence: bool = False                     # epochs-to-target table and curves (report, notebook)
    compact: bool = False                         # most runs keep only config, summary and metrics (keeps_every_log)
    verify_epochs: int | None = None              # sweep.py --verify: the whole run (None), or its first N epochs
    lr_sweep: bool = False                        # labels <model>-lr<rate>: each model compared at its best rate


# The one place where the grids are named, in the order a full sweep runs them: cheapest first,
# so that an interrupted sweep has the most configurations complete.
# The byte-level language model of the lm grid (docs/text.md): width 128, 4 blocks, MoE in
# blocks 2 and 4, 32 windows of 128 bytes a step, every MoE of active width 512 (4 x d). Each run
# times its training step beside the dense model of its active width once trained
# (--step-time-rounds), so that its steps turn into time on the machine that ran it.
LM_BASE = dict(arch="gpt", dataset="python-stdlib", vit_dim=128, vit_heads=4, vit_depth=4, moe_every=2, context=128,
               batch_size=32, lr=2e-3, lr_schedule="onecycle", warmup_fraction=0.05, val_fraction=0.025,
               steps_per_epoch=250, balance_coef=0.01, step_time_rounds=5)
LM_VARIANTS = {
    "dense-active": dict(model="dense", dense_match="active", gating="topk", top_k=2, expert_hidden=256),
    # The dense models of equal total parameters: MoE slots of width 8 x 256 (top-2 and top-8 of 32,
    # 1.63 M parameters) and 8 x 512 = 32 x 128 (top-1 of 8 and top-4 of 32, 2.69 M).
    "dense-params": dict(model="dense", dense_match="params", gating="topk", top_k=2, expert_hidden=256),
    "dense-params-top1": dict(model="dense", dense_match="params", gating="hard", expert_hidden=512),
    "top2-e8": dict(gating="topk", top_k=2, expert_hidden=256),
    "top1-e8": dict(gating="hard", expert_hidden=512),
    # Fine-grained (DeepSeekMoE): each expert of E = 8 cut in four, four times as many chosen.
    "top8-e32": dict(gating="topk", top_k=8, experts=32, expert_hidden=64),
    "top4-e32": dict(gating="topk", top_k=4, experts=32, expert_hidden=128),
    "shared-top1-e8": dict(gating="hard", expert_hidden=256, shared_experts=1),
    "lossfree-top2-e8": dict(gating="topk", top_k=2, expert_hidden=256, balance_coef=0.0, bias_balance_rate=1e-3),
}


# The validation bits per byte whose first crossing measures "how fast" in the lm grid: a level the
# dense model of equal active FLOPs reaches only near the end of its 2,000 steps.
LM_TARGET_BPB = 1.55


def grid_lm(grid: str, epochs: int) -> list[RunSpec]:
    base = {k: v for k, v in LM_BASE.items() if k != "dataset"}
    return [RunSpec(grid, f"lm-{name}", {**base, **flags, "epochs": epochs}, dataset=LM_BASE["dataset"])
            for name, flags in LM_VARIANTS.items()]


LM_LR_RATES = (3e-4, 1e-3, 2e-3, 1e-2)           # 1.5 decades around the lm grid's 2e-3
LM_LR_MODELS = ("dense-active", "dense-params", "top2-e8")


def grid_lr_lm(grid: str, epochs: int, rates=LM_LR_RATES) -> list[RunSpec]:
    """The learning rate of the top-2 language model and of its two dense baselines (the lm grid's
    models; their 2e-3 runs are the lm grid's)."""
    base = {k: v for k, v in LM_BASE.items() if k != "dataset"}
    return [RunSpec(grid, f"lm-{name}-lr{lr:g}", {**base, **LM_VARIANTS[name], "epochs": epochs, "lr": lr},
                    dataset=LM_BASE["dataset"]) for name in LM_LR_MODELS for lr in rates]


# Tables (docs/tables.md): MLP experts of width 32 on the standardised features, 50 epochs of
# batches of 16, each configuration on every fold of 5-fold cross-validation.
TABLE_DATASETS = ("iris", "wine", "breast-cancer", "diabetes")
TABLE_FOLDS = 5
# Every network and reference chooses its learning rate and weight decay (a reference: its
# regularisation) on the validation rows of the training folds, a fixed inner split (--tune).
TABLE_BASE = dict(expert_hidden=32, balance_coef=0.01, folds=TABLE_FOLDS, val_fraction=0.15, log_every=0, tune=True)
TABLE_ROUTERS = {"soft": dict(gating="soft"), "top1": dict(gating="hard"), "top2": dict(gating="topk", top_k=2)}
# The two ways to train a regression mixture (tasks.py): the squared error of the combined mean,
# and the mixture likelihood of Jacobs et al. (1991) with a variance per expert.
TABLE_COMBINES = {"mse": dict(combine="logits"), "mix": dict(combine="probs", expert_variance=True)}
TABLE_REFERENCES = {"classification": ("logistic", "hgb"), "regression": ("ridge", "hgb")}


def grid_tabular(grid: str, epochs: int, datasets=TABLE_DATASETS, counts=(2, 4, 8)) -> list[RunSpec]:
    """Dense (equal total and equal active parameters), soft, top-1 and top-2 mixtures of E experts
    on every table and fold, both regression losses for diabetes, and two scikit-learn
    reference models on the same folds."""
    runs = []
    for dataset in datasets:
        regression = dataset == "diabetes"
        combines = TABLE_COMBINES if regression else {"": {}}
        base = dict(TABLE_BASE, epochs=epochs)
        configs = {}
        for experts in counts:
            for router, flags in TABLE_ROUTERS.items():
                for combine, extra in combines.items():
                    configs[f"e{experts}-{router}{'-' + combine if combine else ''}"] = dict(
                        base, experts=experts, **flags, **extra)
            for match in ("params", "active"):
                configs[f"e{experts}-dense-{match}"] = dict(base, experts=experts, gating="hard", model="dense",
                                                            dense_match=match)
        for name in TABLE_REFERENCES["regression" if regression else "classification"]:
            configs[f"ref-{name}"] = dict(reference=name, folds=TABLE_FOLDS, val_fraction=TABLE_BASE["val_fraction"],
                                          tune=True)
        runs += [RunSpec(grid, label, flags, dataset=dataset, fold=fold)
                 for label, flags in configs.items() for fold in range(TABLE_FOLDS)]
    return runs


# Sentiment of the Rotten Tomatoes snippets (docs/text.md), on the same splits (fold 0 of 5 drawn
# from each seed): as TF-IDF features for mixtures of MLP experts, each network and the logistic
# reference tuned on the validation rows as the tables are; and as bytes for the transformer
# classifier, a smaller copy of the language model (width 64) reading 192 bytes (93 % of the
# snippets whole).
REVIEW_FOLD = 0
REVIEWS_FEATURES = dict(experts=4, expert_hidden=64, balance_coef=0.01, val_fraction=0.1, batch_size=64,
                        log_every=0, tune=True)
REVIEW_MODELS = {"soft": dict(gating="soft"), "top1": dict(gating="hard"), "top2": dict(gating="topk", top_k=2),
                 "dense-params": dict(model="dense", dense_match="params", gating="hard"),
                 "dense-active": dict(model="dense", dense_match="active", gating="hard"),
                 "dense-active-top2": dict(model="dense", dense_match="active", gating="topk", top_k=2)}
REVIEWS_BYTES = dict(arch="gpt", vit_dim=64, vit_heads=4, vit_depth=4, moe_every=2, context=192, batch_size=32,
                     lr=2e-3, lr_schedule="onecycle", warmup_fraction=0.05, val_fraction=0.1, balance_coef=0.01,
                     experts=8, expert_hidden=128, log_every=0)
REVIEW_BYTE_MODELS = {"top2-e8": dict(gating="topk", top_k=2),
                      "dense-params": dict(model="dense", dense_match="params", gating="topk", top_k=2),
                      "dense-active": dict(model="dense", dense_match="active", gating="topk", top_k=2)}


def grid_reviews(grid: str, epochs: int) -> list[RunSpec]:
    """Soft, top-1 and top-2 mixtures of 4 MLP experts on the snippets' TF-IDF features, the dense
    networks of their total and active sizes, and the tuned logistic regression on the same rows."""
    runs = [RunSpec(grid, label, dict(REVIEWS_FEATURES, **flags, epochs=epochs), dataset="tfidf:rotten-tomatoes",
                    fold=REVIEW_FOLD) for label, flags in REVIEW_MODELS.items()]
    reference = dict(reference="logistic", folds=TABLE_FOLDS, val_fraction=REVIEWS_FEATURES["val_fraction"],
                     tune=True)
    return runs + [RunSpec(grid, "ref-logistic", reference, dataset="tfidf:rotten-tomatoes", fold=REVIEW_FOLD)]


def grid_reviews_bytes(grid: str, epochs: int) -> list[RunSpec]:
    """The byte-level transformer classifier on the same snippets: top-2 of 8 MoE blocks against the
    dense transformers of its active and total sizes."""
    return [RunSpec(grid, label, dict(REVIEWS_BYTES, **flags, epochs=epochs), dataset="rotten-tomatoes",
                    fold=REVIEW_FOLD) for label, flags in REVIEW_BYTE_MODELS.items()]


# Graph classification on MNIST's superpixel graphs (docs/graphs.md): the graph transformer of width 64
# (4 blocks, every second block's MLP an MoE slot routing each node); top-1, top-2 and expert choice
# (capacity of 2 experts per node on average) with 4 and 8 experts of width 128, the dense transformers
# of the MoEs' total parameters (per E) and of the top-1 and top-2 active FLOPs (the same for every E).
GRAPHS = dict(arch="graph", vit_dim=64, vit_heads=4, vit_depth=4, moe_every=2, batch_size=64, lr=2e-3,
              lr_schedule="onecycle", warmup_fraction=0.05, val_fraction=0.1, balance_coef=0.01,
              expert_hidden=128, log_every=0)
GRAPH_EXPERTS = (4, 8)
GRAPH_ROUTERS = {"top1": dict(gating="hard"), "top2": dict(gating="topk", top_k=2),
                 "ec": dict(gating="expert-choice", top_k=2)}


def grid_graphs(grid: str, epochs: int) -> list[RunSpec]:
    configs = {}
    for experts in GRAPH_EXPERTS:
        for router, flags in GRAPH_ROUTERS.items():
            configs[f"e{experts}-{router}"] = dict(experts=experts, **flags)
        configs[f"e{experts}-dense-params"] = dict(experts=experts, model="dense", dense_match="params",
                                                   gating="topk", top_k=2)
    configs["dense-active"] = dict(experts=8, model="dense", dense_match="active", gating="hard")
    configs["dense-active-top2"] = dict(experts=8, model="dense", dense_match="active", gating="topk", top_k=2)
    return [RunSpec(grid, label, dict(GRAPHS, **flags, epochs=epochs), dataset="superpixels:mnist")
            for label, flags in configs.items()]


# Molecules by solubility class (docs/graphs.md): the graphs grid's models on the 1,025 + 257 molecules
# of the solubility set, trained longer (40 epochs of 29 batches of 32: about 1,160 steps).
MOLECULES = dict(GRAPHS, batch_size=32)


def grid_molecules(grid: str, epochs: int) -> list[RunSpec]:
    return [dataclasses.replace(run, flags=dict(run.flags, **MOLECULES, epochs=epochs), dataset="solubility")
            for run in grid_graphs(grid, epochs)]


def keeps_every_log(run: RunSpec) -> bool:
    """The tabular runs whose routing logs stay in results/ (the others keep config, summary and
    metrics): the mixtures of 4 experts, seed 0, fold 0, which the figures draw."""
    return run.seed == 0 and run.fold == 0 and run.label.startswith("e4-") and "dense" not in run.label


GRIDS: dict[str, Grid] = {
    "moe_vs_dense": Grid(grid_moe_vs_dense, 5),
    "gating": Grid(grid_gating, 5),
    "regularisation": Grid(grid_regularisation, 5),
    "experts": Grid(grid_experts, 5),
    "regularisation_balanced": Grid(grid_regularisation_balanced, 5),
    "lr": Grid(grid_lr, 5, lr_sweep=True),
    "cifar_trunk": Grid(grid_cifar, 5, verify_epochs=1),
    "cnn_experts": Grid(grid_cnn_experts, 5, verify_epochs=1),
    "cosine": Grid(grid_cosine, 5),
    "sharpness": Grid(grid_sharpness, 5, keep_weights=True),
    "vit": Grid(grid_vit, 3, verify_epochs=1),
    "lr_vit": Grid(grid_lr_vit, 3, verify_epochs=1, lr_sweep=True),
    "balancing": Grid(grid_balancing, 5),
    "capacity": Grid(grid_capacity, 5),
    "shared": Grid(grid_shared, 5),
    "balancing_vit": Grid(grid_balancing_vit, 3, verify_epochs=1),
    "vit_routers": Grid(grid_vit_routers, 3, verify_epochs=1),
    "capacity_vit": Grid(grid_capacity_vit, 3, verify_epochs=1),
    "cifar_heads": Grid(grid_cifar_heads, CIFAR_RECIPE_EPOCHS, keep_weights=True, verify_epochs=1),
    "vit_convergence": Grid(grid_vit_convergence, 15, convergence=True, verify_epochs=1),
    "vit_convergence_deep": Grid(grid_vit_convergence, 15, dict(depth=12), convergence=True, verify_epochs=1),
    "lm": Grid(grid_lm, 8, verify_epochs=1),
    "lr_lm": Grid(grid_lr_lm, 8, verify_epochs=1, lr_sweep=True),
    "tabular": Grid(grid_tabular, 50, compact=True),
    "reviews": Grid(grid_reviews, 10),
    "reviews_bytes": Grid(grid_reviews_bytes, 5, verify_epochs=1),
    "graphs": Grid(grid_graphs, 5, verify_epochs=1),
    "molecules": Grid(grid_molecules, 40),
}
KEEP_WEIGHTS = {name for name, grid in GRIDS.items() if grid.keep_weights}
CONVERGENCE_GRIDS = tuple(name for name, grid in GRIDS.items() if grid.convergence)
COMPACT_GRIDS = {name for name, grid in GRIDS.items() if grid.compact}
LR_GRIDS = tuple(name for name, grid in GRIDS.items() if grid.lr_sweep)
DATASET_TAGS = ("mnist", "fashion-mnist", "cifar10-jpeg", "python-stdlib", *TABLE_DATASETS, "tfidf-rotten-tomatoes",
                "rotten-tomatoes", "superpixels-mnist", "solubility")


def runs(name: str, epochs: int | None = None, **options) -> list[RunSpec]:
    """The runs of grid ``name`` (seed 0), for the study's epochs unless ``epochs`` is given."""
    grid = GRIDS[name]
    return grid.build(name, grid.epochs if epochs is None else epochs, **{**grid.options, **options})


def full_grid() -> list[RunSpec]:
    return [run for name in GRIDS for run in runs(name)]


def quick_grid() -> list[RunSpec]:
    keep = {"moe-hard", "dense-params", "dense-active", "soft", "hard", "top2", "expert-choice", "budget-e1",
            "budget-e4", "none", "balance"}
    quick = (runs("moe_vs_dense", 1, datasets=("mnist",)) + runs("gating", 1, datasets=("mnist",))
             + runs("experts", 1, counts=(1, 4)) + runs("regularisation", 1))
    return [r for r in quick if r.label in keep]


def owners(runs: list[RunSpec]) -> dict[str, RunSpec]:
    """The run that trains each key: the first of ``runs`` (in GRIDS order, the full grid's) with it."""
    first: dict[str, RunSpec] = {}
    for run in runs:
        first.setdefault(run.key, run)
    return first


def shared_runs(seeds=SEEDS) -> dict[str, RunSpec]:
    """The owner of every key of the full grid with ``seeds``: a configuration several grids
    list is one run, in the directory of the first grid that lists it."""
    return owners(with_seeds(full_grid(), seeds))


def with_seeds(runs: list[RunSpec], seeds) -> list[RunSpec]:
    return [RunSpec(r.grid, r.label, r.flags, seed, r.dataset, r.fold) for r in runs for seed in seeds]
