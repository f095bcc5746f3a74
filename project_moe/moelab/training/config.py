"""The one configuration object of a run, its command line, and its validation.

Every field of :class:`Config` is a ``--flag`` (underscores become dashes); its help text,
choices and type come from the field itself, so the CLI and ``config.json`` cannot drift.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.graphs import is_graph_dataset
from ..data.tables import IMPUTE_CHOICES, TASK_CHOICES, TableOptions, is_table_dataset
from ..data.text import is_language_dataset, is_text_dataset
from ..layers.experts import DISPATCH_CHOICES
from ..layers.router_config import RouterConfig
from ..layers.routing import TOKEN_CHOICE
from ..models.spec import (
    ARCH_CHOICES,
    COMBINE_CHOICES,
    DENSE_MATCH_CHOICES,
    EXPERT_TYPES,
    ModelSpec,
)
from ..models.text import LM_REFUSED
from ..models.trunks import TRUNK_CHOICES
from ..options import option

MODEL_CHOICES = ("moe", "dense")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
SCHEDULE_CHOICES = ("cosine", "constant", "onecycle")
OPTIMIZER_CHOICES = ("adamw", "sgd")
DIST_BACKEND_CHOICES = ("auto", "gloo", "nccl")

# Settings that may change between a run and its resumption without changing its results; a
# configuration (study/grids.py, run_key) is the same run whatever they say.
RESUMABLE_DIFFERENCES = {"resume", "overwrite", "device", "threads", "data_dir", "out", "log_every", "expert_dispatch",
                         "compile", "step_time_rounds", "channels_last", "expert_parallel", "dist_backend", "dist_timeout"}


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the flag and what is allowed."""




@dataclass
class Config(RouterConfig):
    """The run: these fields and the router's (inherited from RouterConfig, read whole by the
    router), each one a --flag."""

    # data
    dataset: str = option("mnist", "mnist | fashion-mnist | cifar10 | folder:PATH (PATH/train and PATH/test "
                                   "ImageFolder trees) | python-stdlib (embedded CPython sources) | text:PATH "
                                   "(UTF-8 file or folder): a language model | rotten-tomatoes (the review "
                                   "snippets shipped with the package) | csv-text:PATH (AG News or IMDB layout): "
                                   "text classification; text needs --arch gpt | tfidf:rotten-tomatoes | "
                                   "tfidf:csv-text:PATH: the same texts as a table of TF-IDF features | iris | wine | "
                                   "breast-cancer | diabetes (the tables bundled with scikit-learn) | csv:PATH "
                                   "(a CSV table, with --target) | tu:PATH (TU Dortmund graphs) | superpixels:SPEC "
                                   "(the SLIC superpixel graphs of image dataset SPEC) | solubility (molecules "
                                   "by solubility class, shipped with the package): graphs need --arch graph")
    data_dir: str | None = option(None, "dataset root (default: $MOE_DATA_DIR, else data/ at the repo root)", type=str)
    val_fraction: float = option(0.1, "fraction of the training set held out for validation (model selection)")
    image_size: int | None = option(None, "resize folder: images to SIZE x SIZE (needed when sizes differ)", type=int)
    context: int = option(128, "text: bytes per sequence (language model: its context; classification: texts "
                               "truncated or padded to it)")
    target: str | None = option(None, "csv:PATH: the column to predict", type=str)
    task: str = option(TableOptions.task, "tables: classification or regression (auto: classification for a "
                                          "string target or integers with at most 20 values, regression otherwise); "
                                          "solubility: regression predicts each molecule's SOL value, not its class",
                       TASK_CHOICES)
    folds: int = option(TableOptions.folds, "tables: K of K-fold cross-validation (stratified for classification); "
                                            "fold --fold is the test split, the others train (with --val-fraction of "
                                            "them held out for validation)")
    tune: bool = option(False, "tables: choose --lr and --weight-decay among 3 x 3 values (tuning.py) on the "
                               "validation rows of the training folds, a fixed inner split that never sees the test "
                               "fold, then train with them (tuning.csv; the epochs: the best validation epoch's)")
    fold: int = option(TableOptions.fold, "tables: which fold is the test split (0 .. --folds - 1; sweep.py runs them "
                                          "all)")
    impute: str = option(TableOptions.impute, "tables: refuse missing feature values (none), or fill them with the "
                                              "training medians and, for string columns, the most frequent training "
                                              "value (median)", IMPUTE_CHOICES)
    target_bins: int = option(TableOptions.target_bins, "regression: quantile bins of the training targets that take "
                                                        "the place of classes in the routing tables")
    expert_variance: bool = option(False, "regression: every expert (or the dense network) also predicts a "
                                          "log-variance, trained by Gaussian likelihood (needs --combine probs for "
                                          "an MoE: the mixture likelihood)")
    steps_per_epoch: int = option(0, "language model: training steps (batches of random windows) per epoch, "
                                     "each epoch ending with a validation pass (0 = as many as cover the training "
                                     "bytes once)")
    # model
    model: str = option("moe", "moe, or the dense baseline of matched size", MODEL_CHOICES)
    arch: str = option("mixture", "mixture: the classifier is a mixture of expert classifiers (after an optional "
                                  "trunk); vit: a small Vision Transformer whose every --moe-every-th MLP block is "
                                  "an MoE layer routing patch tokens; gpt: the same blocks over bytes (text "
                                  "datasets), causal for a language model; graph: the same blocks over the nodes "
                                  "of a graph, attention along its edges (tu:PATH, superpixels:SPEC, solubility)", ARCH_CHOICES)
    experts: int = option(8, "number of experts E")
    slots_per_expert: int = option(1, "soft-slots: slots each expert processes per image (its cost: experts x slots "
                                      "rows per image)")
    combine: str = option("logits", "mix expert logits (Shazeer/Switch) or class probabilities (Jacobs 1991)",
                          COMBINE_CHOICES)
    expert_type: str = option("mlp", "expert network", EXPERT_TYPES)
    expert_hidden: int = option(128, "hidden width of each expert (MLP layers, or the CNN's head)")
    shared_experts: int = option(0, "experts, shaped as the routed ones, that process every sample or token, their "
                                    "outputs added to the routed mixture (DeepSeekMoE)")
    expert_depth: int = option(1, "hidden layers per MLP expert")
    expert_channels: int = option(32, "channels of the first conv layer of a CNN expert")
    trunk: str = option("none", "shared feature extractor in front of router and experts", TRUNK_CHOICES)
    trunk_channels: int = option(32, "channels of the first conv layer of the trunk (features: 16x for cnn, 8x for "
                                     "resnet)")
    trunk_blocks: int = option(1, "resnet trunk: residual blocks per stage (3 stages)")
    dropout: float = option(0.0, "dropout after each hidden layer of the experts")
    expert_dispatch: str = option("auto", "how MLP experts run their samples: one matmul per expert (grouped), one "
                                          "batched matmul over rows padded to the busiest expert's count "
                                          "(padded), torch's grouped GEMM, one call per layer for all experts "
                                          "(grouped_mm; grouped where torch or the device lacks it), or padded "
                                          "while experts get few rows and grouped otherwise (auto); the same "
                                          "results up to float rounding", DISPATCH_CHOICES)
    vit_patch: int = option(4, "vit: patch size in pixels (must divide the image size)")
    vit_dim: int = option(96, "vit, gpt: token width d")
    vit_depth: int = option(4, "vit, gpt: transformer blocks")
    vit_heads: int = option(3, "vit, gpt: attention heads (must divide --vit-dim)")
    moe_every: int = option(2, "vit, gpt: every N-th block (N, 2N, ...) has an MoE layer instead of its MLP")
    dense_match: str = option("params", "--model dense: match the MoE's total parameters or its active "
                                        "parameters per sample", DENSE_MATCH_CHOICES)
    # auxiliary losses (0 = off)
    balance_coef: float = option(0.1, "Switch load-balancing loss E * sum_i f_i P_i")
    cv_coef: float = option(0.0, "Shazeer importance + load CV^2 loss")
    z_coef: float = option(0.0, "ST-MoE router z-loss")
    entropy_coef: float = option(0.0, "per-sample gate entropy (positive sharpens, negative smooths)")
    kl_uniform_coef: float = option(0.0, "KL(batch-mean gate || uniform)")
    centroid_coef: float = option(0.0, "cosine router: mean squared cosine between centroids (pushes them apart)")
    # optimisation
    epochs: int = option(5, "training epochs (tables: 50)")
    batch_size: int = option(128, "training batch size (also the evaluation batch for expert-choice; tables: 16)")
    optimizer: str = option("adamw", "adamw, or sgd with Nesterov momentum", OPTIMIZER_CHOICES)
    lr: float = option(2e-3, "peak learning rate")
    momentum: float = option(0.9, "sgd: Nesterov momentum")
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw, L2 for sgd)")
    lr_schedule: str = option("cosine", "learning-rate schedule over all steps (onecycle: linear warm-up over "
                                        "--warmup-fraction of the steps, then linear decay to 0)", SCHEDULE_CHOICES)
    warmup_fraction: float = option(0.2, "onecycle: share of the steps spent warming up")
    label_smoothing: float = option(0.0, "label smoothing of the training cross-entropy (evaluation stays plain)")
    tta_flip: bool = option(False, "evaluate on each image and its mirror image, averaging the logits; "
                                   "only for 3-channel data, trained with flips (refused otherwise)")
    seed: int = option(0, "seed of initialisation, validation split, batch order, augmentation and noise")
    device: str = option("auto", "auto picks cuda when available", DEVICE_CHOICES)
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)", type=int)
    amp: bool = option(False, "mixed precision: bf16 autocast (float16 with loss scaling on GPUs without bf16); "
                              "router scores, weights, logs and checkpoints stay float32")
    compile: bool = option(False, "torch.compile the model's forward pass (its first step, which compiles, is timed "
                                  "apart and left out of samples/s)")
    channels_last: bool = option(False, "keep conv weights and image batches in channels-last (NHWC) memory "
                                        "layout, which convolution kernels on recent CPUs and GPUs prefer")
    # several processes (under torchrun)
    expert_parallel: bool = option(False, "under torchrun: split the experts of every MoE layer over the processes "
                                          "(all-to-all exchange) instead of replicating them")
    dist_backend: str = option("auto", "under torchrun: torch.distributed backend (auto: nccl on CUDA, gloo on CPU)",
                               DIST_BACKEND_CHOICES)
    dist_timeout: float = option(120.0, "under torchrun: seconds a process waits for the others in a collective "
                                        "before it gives up (a peer that died or hangs)")
    # output
    out: str = option("runs", "directory that holds run directories")
    run_name: str | None = option(None, "run directory name (default: built from the main flags and the seed)",
                                  type=str)
    log_every: int = option(40, "write each expert's loss and load on the training batch to experts.csv every N "
                                "steps (0 = off; 40: 52 points in 5 epochs of MNIST)")
    step_time_rounds: int = option(0, "after training, time this run's training step against the dense network of "
                                      "its active width, side by side in N interleaved rounds, and record the ratio "
                                      "in summary.json (0 = off)")
    train_eval_size: int = option(5000, "training samples re-evaluated each epoch for per-expert statistics")
    resume: bool = option(False, "continue the run in --out/--run-name from its last checkpoint")
    overwrite: bool = option(False, "delete an existing run directory of the same name first")

    def model_spec(self) -> ModelSpec:
        names = {f.name for f in dataclasses.fields(ModelSpec)}
        return ModelSpec(**{k: v for k, v in dataclasses.asdict(self).items() if k in names},
                         causal=self.arch == "gpt" and is_language_dataset(self.dataset))

    def default_run_name(self) -> str:
        kind, _, path = self.dataset.partition(":")
        dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{'' if kind == 'folder' else kind + '-'}{Path(path).name}"
                         if path else self.dataset)
        if self.model == "dense":
            body = f"dense-{self.dense_match}-e{self.experts}-{self.gating}"
        else:
            k = "" if self.gating in ("soft", "hard") else f"-k{self.top_k}"
            body = f"moe-{self.gating}{k}-e{self.experts}"
            if self.router_score == "cosine":
                body += f"-cos{self.router_centroids}"
            if self.router_score == "attention":
                body += "-att"
            if self.shared_experts:
                body += f"-sh{self.shared_experts}"
            if self.drop_policy != "dropless":
                body += f"-cap{self.capacity_factor:g}{self.drop_policy[:3]}"
            if self.bias_balance_rate:
                body += f"-lf{self.bias_balance_rate:g}"
        kind = self.arch if self.arch in ("vit", "gpt", "graph") else self.expert_type
        if is_table_dataset(self.dataset):
            body += ("-probs" if self.combine == "probs" else "") + ("-var" if self.expert_variance else "")
            # what else chooses the data of a table: its target column, a forced task, imputation, bins
            dataset += f"-{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.target)}" if self.target else ""
            dataset += "" if self.task == "auto" else f"-{self.task[:3]}"
            dataset += "-imp" if self.impute != "none" else ""
            dataset += f"-b{self.target_bins}" if self.target_bins != TableOptions.target_bins else ""
        elif self.dataset == "solubility" and self.task != "auto":   # the class, or the value
            dataset += f"-{self.task[:3]}" + (f"-b{self.target_bins}" if self.target_bins != TableOptions.target_bins
                                              else "")
        if has_folds(self.dataset):
            kind = f"{kind}-f{self.fold}of{self.folds}"
        return f"{dataset}-{body}-{kind}-s{self.seed}"

    def table_options(self) -> TableOptions:
        return TableOptions(target=self.target, task=self.task, folds=self.folds, fold=self.fold, impute=self.impute,
                            target_bins=self.target_bins)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / (self.run_name or self.default_run_name())


def flag_fields() -> list[dataclasses.Field]:
    """The fields of Config in the order of its flags: the router's, inherited (and so first among
    the dataclass fields), come after --experts."""
    router = [f for f in dataclasses.fields(RouterConfig)]
    names = {f.name for f in router}
    own = [f for f in dataclasses.fields(Config) if f.name not in names]
    at = next(i for i, f in enumerate(own) if f.name == "experts") + 1
    return own[:at] + router + own[at:]


def config_record(cfg: Config) -> dict:
    """The settings by name in the order of the flags (config.json's ``config``)."""
    return {f.name: getattr(cfg, f.name) for f in flag_fields()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train one Mixture-of-Experts model (or its dense baseline) and log its routing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in flag_fields():
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", help=meta["help"])
            continue
        kind = meta["type"] or type(f.default)
        parser.add_argument(flag, type=kind, default=f.default, choices=meta["choices"], help=meta["help"],
                            metavar=None if meta["choices"] else f.name.upper())
    return parser


# A table has a few hundred rows: an epoch is a handful of steps, so it trains for more epochs,
# in smaller batches, unless the command line says otherwise (config.json records the values used).
TABLE_DEFAULTS = {"epochs": 50, "batch_size": 16}
# A TF-IDF table has thousands of rows and thousands of features: the image defaults' batches, fewer epochs.
TEXT_FEATURE_DEFAULTS = {"epochs": 10}


def has_folds(dataset: str) -> bool:
    """Datasets without a given test split, cut by --folds and --fold: the tables, the review
    snippets (as bytes or as a TF-IDF table) and graphs (tu:PATH); csv-text:PATH brings its own."""
    inner = dataset[len("tfidf:"):] if dataset.startswith("tfidf:") else dataset
    return (is_table_dataset(dataset) and not inner.startswith("csv-text:")) or inner == "rotten-tomatoes" \
        or dataset.startswith("tu:")


def parse_args(argv: list[str] | None = None) -> Config:
    values = vars(build_parser().parse_args(argv))
    if is_table_dataset(values["dataset"]):
        probe = build_parser()
        for action in probe._actions:
            action.default = argparse.SUPPRESS
        given = vars(probe.parse_args(argv))
        defaults = TEXT_FEATURE_DEFAULTS if values["dataset"].startswith("tfidf:") else TABLE_DEFAULTS
        values.update({name: value for name, value in defaults.items() if name not in given})
    return Config(**values)


def validate(cfg: Config) -> None:
    """Reject impossible settings before anything is created; raises ConfigError."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(cfg.experts >= 1, f"--experts must be >= 1 (got {cfg.experts})")
    token_k = cfg.gating in ("topk", "noisy-topk", "gumbel")
    need(cfg.top_k >= 1, f"--top-k must be >= 1 (got {cfg.top_k})")
    need(not token_k or cfg.top_k <= cfg.experts,
         f"--top-k must be between 1 and --experts={cfg.experts} for --gating {cfg.gating} (got {cfg.top_k})")
    need(cfg.capacity_factor > 0, f"--capacity-factor must be > 0 (got {cfg.capacity_factor})")
    need(cfg.shared_experts >= 0, f"--shared-experts must be >= 0 (got {cfg.shared_experts})")
    need(cfg.shared_experts == 0 or cfg.combine == "logits",
         "--shared-experts adds logits to the routed mixture; --combine probs mixes class distributions: "
         "use --combine logits with it")
    need(cfg.bias_balance_rate >= 0, f"--bias-balance-rate must be >= 0 (got {cfg.bias_balance_rate})")
    need(cfg.bias_balance_rate == 0 or cfg.gating in TOKEN_CHOICE,
         f"--bias-balance-rate biases the experts a token chooses; --gating {cfg.gating} has no such choice: "
         "drop --bias-balance-rate or use hard, topk, noisy-topk or gumbel")
    need(cfg.drop_policy == "dropless" or cfg.gating in TOKEN_CHOICE,
         f"--drop-policy {cfg.drop_policy} caps token-choice routers; --gating {cfg.gating} "
         + ("has its own capacity (--capacity-factor)" if cfg.gating == "expert-choice" else "drops nothing")
         + ": drop --drop-policy")
    need(cfg.tau > 0, f"--tau must be > 0 (got {cfg.tau})")
    need(0 <= cfg.router_jitter < 1, f"--router-jitter must be in [0, 1) (got {cfg.router_jitter})")
    for name in ("epochs", "batch_size", "expert_hidden", "expert_depth", "expert_channels", "trunk_channels",
                 "router_dim", "router_centroids", "vit_patch", "vit_dim", "vit_depth", "vit_heads", "moe_every",
                 "context"):
        value = getattr(cfg, name)
        need(value >= 1, f"--{name.replace('_', '-')} must be a positive integer (got {value})")
    need(cfg.lr > 0, f"--lr must be > 0 (got {cfg.lr})")
    need(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1) (got {cfg.momentum})")
    need(0 <= cfg.warmup_fraction < 1, f"--warmup-fraction must be in [0, 1) (got {cfg.warmup_fraction})")
    need(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {cfg.label_smoothing})")
    need(cfg.trunk_blocks >= 0, f"--trunk-blocks must be >= 0 (got {cfg.trunk_blocks})")
    need(cfg.weight_decay >= 0, f"--weight-decay must be >= 0 (got {cfg.weight_decay})")
    need(0 <= cfg.val_fraction < 1, f"--val-fraction must be in [0, 1) (got {cfg.val_fraction})")
    need(0 <= cfg.dropout < 1, f"--dropout must be in [0, 1) (got {cfg.dropout})")
    need(cfg.log_every >= 0, f"--log-every must be >= 0 (got {cfg.log_every})")
    need(cfg.step_time_rounds >= 0, f"--step-time-rounds must be >= 0 (got {cfg.step_time_rounds})")
    need(cfg.train_eval_size >= 0, f"--train-eval-size must be >= 0 (got {cfg.train_eval_size})")
    need(cfg.image_size is None or cfg.image_size >= 1, f"--image-size must be >= 1 (got {cfg.image_size})")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1 (got {cfg.threads})")
    need(cfg.dist_timeout > 0, f"--dist-timeout must be > 0 seconds (got {cfg.dist_timeout})")
    tokens = cfg.arch in ("vit", "gpt", "graph")
    need(not tokens or (cfg.trunk == "none" and cfg.expert_type == "mlp"),
         f"--arch {cfg.arch} has its own embedding and MLP experts: drop --trunk and --expert-type")
    need(not tokens or cfg.vit_dim % cfg.vit_heads == 0,
         f"--vit-dim {cfg.vit_dim} must be a multiple of --vit-heads {cfg.vit_heads}")
    need(not tokens or cfg.model == "dense" or cfg.moe_every <= cfg.vit_depth,
         f"--moe-every {cfg.moe_every} > --vit-depth {cfg.vit_depth} leaves no MoE block; lower --moe-every")
    need(not tokens or cfg.combine == "logits",
         f"--combine probs mixes class distributions; the MoE layers of --arch {cfg.arch} mix token features: "
         "use --combine logits")
    need(cfg.steps_per_epoch >= 0, f"--steps-per-epoch must be >= 0 (got {cfg.steps_per_epoch})")
    text = is_text_dataset(cfg.dataset)
    need(text == (cfg.arch == "gpt"),
         f"--dataset {cfg.dataset} is text: it needs --arch gpt (or, for labelled texts, --dataset "
         f"tfidf:{cfg.dataset} and MLP experts on their TF-IDF features)" if text else
         f"--arch gpt reads bytes: use a text dataset (python-stdlib, text:PATH, rotten-tomatoes, csv-text:PATH), "
         f"not {cfg.dataset}")
    graph = is_graph_dataset(cfg.dataset)
    need(graph == (cfg.arch == "graph"),
         f"--dataset {cfg.dataset} is graphs: it needs --arch graph" if graph else
         f"--arch graph reads graphs: use --dataset tu:PATH, superpixels:SPEC or solubility, not {cfg.dataset}")
    need(not graph or cfg.gating != "soft-slots", "--gating soft-slots mixes a fixed number of tokens per input; "
                                                 "graphs differ in size: choose another router")
    need(not graph or cfg.router_score != "attention", "--router-score attention needs a fixed number of tokens per "
                                                       "input; graphs differ in size: use linear or cosine")
    need(cfg.steps_per_epoch == 0 or is_language_dataset(cfg.dataset),
         "--steps-per-epoch sets the epochs of a language model (python-stdlib, text:PATH); "
         f"an epoch of {cfg.dataset} is one pass over its samples: drop --steps-per-epoch")
    if cfg.arch == "gpt" and is_language_dataset(cfg.dataset) and cfg.model == "moe":
        why = LM_REFUSED.get(cfg.gating)
        need(why is None, f"--gating {cfg.gating} cannot route a causal language model: {why}; use hard, topk, "
                          "noisy-topk or gumbel (or train a classifier on csv-text:PATH)")
        need(cfg.router_score != "attention", "--router-score attention lets every token of a sequence vote, so a "
                                              "byte's routing would depend on later bytes; use linear or cosine")
        need(cfg.drop_policy != "priority", "--drop-policy priority keeps the most probable assignments of the "
                                            "whole batch, so whether a byte is dropped depends on later bytes; use "
                                            "position (earlier tokens first) or dropless")
        need(cfg.drop_policy != "position" or cfg.gating == "hard",
             "--drop-policy position ranks every token's first choice before any second choice, so whether a "
             "byte's second expert is kept depends on later bytes; use it with --gating hard, or dropless")
    table = is_table_dataset(cfg.dataset)
    need(not table or (cfg.arch == "mixture" and cfg.expert_type == "mlp" and cfg.trunk == "none"),
         f"--dataset {cfg.dataset} is a table of features: it takes MLP experts on the features "
         "(--arch mixture --expert-type mlp --trunk none)")
    need(cfg.target is None or cfg.dataset.startswith("csv:"),
         "--target names the column to predict of --dataset csv:PATH; drop it for other datasets")
    # The molecules have a class and a real value: --task regression predicts the value.
    target = table or cfg.dataset == "solubility"
    need(target or cfg.task == "auto",
         f"--task sets the task of a table or of --dataset solubility; {cfg.dataset} is neither: drop --task")
    need(table or cfg.impute == "none", "--impute fills missing values of a table; drop it for other datasets")
    need(cfg.folds >= 2, f"--folds must be >= 2 (got {cfg.folds}): one fold is the test split")
    need(0 <= cfg.fold < cfg.folds, f"--fold must be in 0..{cfg.folds - 1} for --folds {cfg.folds} (got {cfg.fold})")
    need(cfg.target_bins >= 2, f"--target-bins must be >= 2 (got {cfg.target_bins})")
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for name in ("folds", "fold"):
        need(has_folds(cfg.dataset) or getattr(cfg, name) == defaults[name],
             f"--{name.replace('_', '-')} cuts a dataset that has no test split of its own (a table, "
             f"rotten-tomatoes); {cfg.dataset} has one: drop it")
    need(target or cfg.target_bins == defaults["target_bins"],
         f"--target-bins sets how a regression target is binned; {cfg.dataset} has none: drop it")
    need(not cfg.expert_variance or table, "--expert-variance is for a regression on a table; drop it")
    need(not cfg.expert_variance or cfg.model == "dense" or cfg.combine == "probs",
         "--expert-variance trains each expert's variance through the mixture likelihood: add --combine probs "
         "(with --combine logits the squared error has no variance)")
    need(not cfg.tune or table, f"--tune chooses the learning rate on a table's validation rows; {cfg.dataset} is not "
                                "a table: drop --tune (for other datasets, sweep.py's lr grids)")
    need(not cfg.tune or cfg.val_fraction > 0, "--tune chooses on the validation rows: give --val-fraction > 0")
    need(not (table and cfg.tta_flip), "--tta-flip mirrors images; a table has none: drop --tta-flip")
    need(not (cfg.trunk != "none" and cfg.expert_type == "cnn"),
         f"--trunk {cfg.trunk} feeds features, not images, to the experts: use --expert-type mlp with it")
    slots = cfg.gating == "soft-slots"
    need(not slots or cfg.arch in ("vit", "gpt"),
         "--gating soft-slots mixes a sequence's tokens into slots; it needs --arch vit or gpt")
    need(cfg.slots_per_expert >= 1, f"--slots-per-expert must be >= 1 (got {cfg.slots_per_expert})")
    need(slots or cfg.slots_per_expert == 1, "--slots-per-expert sets the slots of --gating soft-slots; drop it "
                                             f"for --gating {cfg.gating}")
    need(not slots or cfg.router_score == "linear", f"--gating soft-slots has slot parameters, not a router: "
                                                     f"drop --router-score {cfg.router_score}")
    need(not slots or cfg.shared_experts == 0, "--shared-experts adds experts beside a router's mixture; "
                                               "--gating soft-slots has none: drop --shared-experts")
    need(cfg.router_score != "attention" or cfg.arch in ("vit", "gpt"),
         "--router-score attention lets the tokens of a sequence vote; it needs --arch vit or gpt")
    need(cfg.router_score == "cosine" or cfg.router_centroids == 1,
         f"--router-centroids {cfg.router_centroids} needs --router-score cosine (a linear router has one "
         "weight vector per expert)")
    need(cfg.router_score == "cosine" or cfg.centroid_coef == 0,
         "--centroid-coef acts on the centroids of --router-score cosine; set both, or drop --centroid-coef")
    need(not (cfg.resume and cfg.overwrite), "--resume and --overwrite exclude each other: choose one")
    if cfg.run_name is not None:
        need(re.fullmatch(r"[A-Za-z0-9_.=+-]+", cfg.run_name) is not None and cfg.run_name not in (".", ".."),
             f"--run-name may hold only letters, digits and _ . = + - (got {cfg.run_name!r})")
    _check_writable(Path(cfg.out))


def _check_writable(out: Path) -> None:
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} is not writable (no write permission on {existing}); "
                          "choose a directory you can write to")
