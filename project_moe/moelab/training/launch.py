"""One run from its command line: check the input, set up the processes and the run directory,
then train (trainer.py).

Exit codes: 0 done, 2 bad input, 3 non-finite loss, 4 a peer process failed, 130 / 143
interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .. import data, distributed
from ..distributed import Cluster
from ..models.builder import describe_cost
from ..models.vit import check_vit_fits
from . import tuning
from .checkpointing import Checkpoints
from .config import RESUMABLE_DIFFERENCES, Config, ConfigError, config_record, parse_args, validate
from .device import resolve_device
from .exits import EXIT_BAD_INPUT, EXIT_PEER_FAILED
from .provenance import ALLOW_DIRTY_ENV, PortablePaths, code_state, cpu_model
from .reporting import RunReport
from .run_files import RunFileError, read_config, read_json, write_json
from .trainer import Trainer

BAD_INPUT = (ConfigError, data.DataError, distributed.ParallelismError, RunFileError)


def environment(device: torch.device, cluster: Cluster, paths: PortablePaths) -> dict:
    """Versions, machine and code of the run; argv with portable paths (provenance.py)."""
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "cpu_model": cpu_model(), "threads": torch.get_num_threads(), "processes": cluster.world_size,
            "dist_backend": cluster.backend, **code_state().as_record(),
            "allow_dirty": os.environ.get(ALLOW_DIRTY_ENV) == "1",
            "argv": [paths.portable(arg) for arg in sys.argv]}


def portable_config(cfg: Config, paths: PortablePaths) -> dict:
    """The settings as config.json records them: the paths among them made portable."""
    record = config_record(cfg)
    for name in ("dataset", "data_dir", "out"):
        record[name] = paths.portable(record[name])
    return record


def prepare_run_dir(cfg: Config) -> Path:
    """Check, before any work, that the run directory may be used as asked; its files are read
    only to resume it (a damaged one: RunFileError), and --overwrite replaces it unread."""
    run_dir = cfg.run_dir
    if cfg.resume:
        if not (run_dir / "checkpoint.pt").exists():
            raise ConfigError(f"--resume: no checkpoint at {run_dir / 'checkpoint.pt'}; "
                              "check --out and --run-name, or start a new run without --resume")
        check_same_config(cfg, read_config(run_dir / "config.json"))   # RunFileError if damaged
        summary = run_dir / "summary.json"
        if summary.exists() and read_json(summary).get("status") == "completed":
            raise ConfigError(f"--resume: {run_dir} already completed (see its summary.json); "
                              "pass --overwrite to train it again, or choose another --run-name")
    elif run_dir.exists() and not cfg.overwrite:
        raise ConfigError(f"run directory {run_dir} already exists: pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --run-name")
    return run_dir


def check_same_config(cfg: Config, saved: dict) -> None:
    raw = config_record(cfg)   # runs recorded before paths were made portable hold them as given
    current = portable_config(cfg, PortablePaths.for_run(cfg.run_dir, data.resolve_data_dir(cfg.data_dir)))
    for key, value in saved.items():
        if key in RESUMABLE_DIFFERENCES or key not in current or value in (current[key], raw[key]):
            continue
        flag = "--" + key.replace("_", "-")
        raise ConfigError(f"--resume: the checkpoint was trained with {flag} {value}, this command says "
                          f"{flag} {raw[key]}; use the same settings or a new --run-name")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    rank, world_size, local_rank = distributed.world_from_env()
    try:
        validate(cfg)
        data.check_dataset_spec(cfg.dataset)
        distributed.check_fits_world(cfg.model_spec(), cfg.batch_size, cfg.expert_parallel, world_size)
        if world_size > 1 and data.is_table_dataset(cfg.dataset):
            raise ConfigError(f"--dataset {cfg.dataset} is a table of a few hundred rows, trained in one process: "
                              "run python train.py without torchrun")
        device = resolve_device(cfg.device, local_rank)
    except BAD_INPUT as error:
        if rank == 0:   # every rank parsed the same command line and found the same fault
            print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cluster = distributed.start(device.type, cfg.dist_backend, cfg.dist_timeout, cfg.expert_parallel)
    code = EXIT_PEER_FAILED      # until run() returns: an exception leaves the peers in doubt
    try:
        code = run(cfg, device, cluster)
        return code
    finally:
        distributed.stop(cluster, peers_alive=code != EXIT_PEER_FAILED)


def check_table_task(cfg: Config, dataset) -> None:
    """Refuse the flags that the task of the loaded table does not take."""
    if dataset.task == "classification" and cfg.expert_variance:
        raise ConfigError(f"--expert-variance is for a regression; {cfg.dataset} is a classification: drop it")
    if dataset.task == "classification" and cfg.target_bins != data.TableOptions.target_bins:
        raise ConfigError(f"--target-bins bins a regression target; {cfg.dataset} is a classification: drop it")
    if dataset.task == "regression" and cfg.label_smoothing:
        raise ConfigError(f"--label-smoothing smooths class labels; {cfg.dataset} is a regression: drop it")


def table_facts(dataset) -> dict:
    """What config.json records of a table: its task, features, folds and target scaling (of a
    graph regression: its task and target scaling)."""
    if getattr(dataset, "task", None) == "regression" and not isinstance(dataset, data.TableDataset):
        return {"task": "regression", "target_mean": dataset.target_mean, "target_std": dataset.target_std}
    if not isinstance(dataset, data.TableDataset):
        return {}
    return {"task": dataset.task, "target": dataset.target_name, "features": dataset.feature_names,
            "folds": dataset.folds, "fold": dataset.fold, "target_mean": dataset.target_mean,
            "target_std": dataset.target_std, "rows": {split: len(getattr(dataset, split))
                                                       for split in ("train", "val", "test")}}


def _train_candidate(cfg: Config, run_dir: Path, dataset, device: torch.device) -> int:
    return make_trainer(cfg, run_dir, dataset, device, distributed.SINGLE_PROCESS).run(resume=False)


def make_trainer(cfg: Config, run_dir: Path, dataset, device: torch.device, cluster: Cluster) -> Trainer:
    """The run's trainer with its collaborators: the checkpoints and the report of ``run_dir``."""
    return Trainer(cfg, run_dir, dataset, device, cluster, Checkpoints(run_dir, cluster, device),
                   RunReport(run_dir, cluster, cfg.out))


def tuned_settings(cfg: Config, run_dir: Path, dataset, device: torch.device) -> dict[str, float]:
    """--tune: the settings chosen on the validation rows (tuning.py); a resumed run keeps those
    it chose when it started (its tuning.csv)."""
    chosen = tuning.chosen_before(run_dir) if cfg.resume else None
    if chosen is None:
        chosen = tuning.choose(cfg, run_dir, dataset, device, _train_candidate)
    print(f"--tune: chose --lr {chosen['lr']:g} --weight-decay {chosen['weight_decay']:g} on the validation rows "
          f"({len(tuning.candidates())} candidates, {run_dir / 'tuning.csv'})")
    return chosen


def run(cfg: Config, device: torch.device, cluster: Cluster) -> int:
    try:
        run_dir = distributed.on_writer(cluster, lambda: prepare_run_dir(cfg), BAD_INPUT)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # The first process of each machine unpacks or decodes the data, the others then read it.
        dataset = distributed.local_first(
            cluster, lambda: data.load_dataset(cfg.dataset, data.resolve_data_dir(cfg.data_dir),
                                               val_fraction=cfg.val_fraction, seed=cfg.seed,
                                               image_size=cfg.image_size, context=cfg.context,
                                               table=cfg.table_options()), BAD_INPUT)
        if isinstance(dataset, data.TableDataset) or cfg.dataset == "solubility":
            check_table_task(cfg, dataset)
        if cfg.arch == "vit":
            try:
                check_vit_fits(cfg.model_spec(), dataset.in_shape)
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if cfg.tta_flip and not dataset.augment:
            raise ConfigError("--tta-flip averages each image with its mirror, which is only meaningful for data "
                              f"trained with flip augmentation (3-channel images; {cfg.dataset} has "
                              f"{dataset.in_shape[0]}-channel images); drop --tta-flip")
    except BAD_INPUT as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except distributed.RefusedElsewhere:
        return EXIT_BAD_INPUT      # the rank that refused said why
    if cluster.is_writer:
        if cfg.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(cluster)
    if cfg.tune:              # a table, one process: the learning rate and weight decay of the run
        cfg = dataclasses.replace(cfg, **tuned_settings(cfg, run_dir, dataset, device))
    trainer = make_trainer(cfg, run_dir, dataset, device, cluster)
    table = isinstance(dataset, data.TableDataset)
    unit = " bytes" if trainer.language else " rows" if table else ""
    fold = f" (fold {dataset.fold} of {dataset.folds}; {dataset.task}, {dataset.in_shape[0]} features)" if table else ""
    trainer.say(f"{cfg.dataset} ({dataset.source}): train {len(dataset.train)}{unit}, val {len(dataset.val)}{unit}, "
                f"test {len(dataset.test)}{unit}{fold}; device {device}; {cluster.describe()}\n"
                f"{describe_cost(trainer.cost)}")
    if not cfg.resume and cluster.is_writer:
        paths = PortablePaths.for_run(run_dir, data.resolve_data_dir(cfg.data_dir))
        write_json(run_dir / "config.json", {"config": portable_config(cfg, paths),
                                             "environment": environment(device, cluster, paths),
                                             "dataset": {"source": paths.portable_sentence(dataset.source),
                                                         "classes": list(dataset.classes),
                                                         "in_shape": list(dataset.in_shape), **table_facts(dataset)},
                                             "cost": trainer.cost})
    return trainer.run(resume=cfg.resume)


if __name__ == "__main__":
    sys.exit(main())
