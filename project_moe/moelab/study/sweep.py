"""The experiment suite: named grids of train.py runs over several seeds, and their aggregation.

    python sweep.py --quick                 # reduced grid, a few minutes on 2 CPU cores
    python sweep.py --data-dir DIR          # the full grid (DIR holds MNIST/, FashionMNIST/, cifar10-jpeg/)
    python sweep.py --grid gating experts   # some grids only
    python sweep.py --aggregate             # results/summary.csv from the runs in results/

Each run is a separate ``train.py`` process writing to results/runs/<grid>/<run-name>/. A run
whose summary says "completed" is skipped, an interrupted one is resumed, and a failing one
is recorded and the sweep goes on; the sweep exits non-zero at the end if any run failed.
Weights (*.pt) are deleted once a run completes: results/ keeps only the compact logs (in the
tabular grid, config, summary and metrics of most runs: grids.keeps_every_log). The tabular
grid's scikit-learn references (references.py) are fitted in the sweep's own process.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..paths import IN_CHECKOUT, PACKAGE_DIR, PROJECT_DIR, REPO_ROOT
from ..training.config import DEVICE_CHOICES
from ..training.exits import EXIT_BAD_INPUT
from ..training.provenance import ALLOW_DIRTY_ENV, code_state
from ..training.run_files import RunFileError, read_json
from . import comparisons, logs, references
from .grids import (
    COMPACT_GRIDS,
    DATASET_TAGS,
    GRIDS,
    KEEP_WEIGHTS,
    SEEDS,
    RunSpec,
    full_grid,
    keeps_every_log,
    owners,
    quick_grid,
    with_seeds,
)

DEFAULT_RESULTS = PROJECT_DIR / "results"


@dataclass
class Outcome:
    run: RunSpec
    status: str          # done | skipped | failed
    seconds: float = 0.0
    detail: str = ""


def run_status(run_dir: Path) -> str | None:
    """The status in the run's summary.json, None without one; RunFileError if it is damaged."""
    summary = run_dir / "summary.json"
    if not summary.exists():
        return None
    fix = f"restore it from a copy, or delete {run_dir} to train the run again"
    return read_json(summary, fix).get("status")


def execute(run: RunSpec, results: Path, data_dir: str | None, device: str, threads: int | None,
            keep: bool = False, allow_dirty: bool = False) -> Outcome:
    """Train ``run`` (or skip, resume it); ``keep``: its model.pt stays for analysis.py."""
    out = results / "runs" / run.grid
    run_dir = out / run.name
    log_path = out / f"{run.name}.log"
    try:
        status = run_status(run_dir)
    except RunFileError as error:     # neither skipped, resumed nor replaced: recorded, and the sweep goes on
        return Outcome(run, "failed", 0.0, f"error: {error}")
    if status == "completed":
        _drop_weights_and_log(run_dir, log_path, keep, _compact(run))   # left behind if the sweep was killed
        return Outcome(run, "skipped")
    if run.reference:
        return _fit_reference(run, run_dir, threads)
    argv = [sys.executable, str(PROJECT_DIR / "train.py"), *run.argv(data_dir), "--out", str(out), "--run-name", run.name,
            "--device", device]
    if data_dir:
        argv += ["--data-dir", data_dir]
    if threads:
        argv += ["--threads", str(threads)]
    if (run_dir / "checkpoint.pt").exists():
        argv.append("--resume")
    elif run_dir.exists():
        argv.append("--overwrite")   # a run that died before its first checkpoint: nothing to keep
    begin = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, ALLOW_DIRTY_ENV: "1"} if allow_dirty else None
    with log_path.open("a") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR, env=env).returncode
    seconds = time.perf_counter() - begin
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        return Outcome(run, "failed", seconds, f"exit {code}: {tail[0]}")
    _drop_weights_and_log(run_dir, log_path, keep, _compact(run))
    return Outcome(run, "done", seconds)


def _compact(run: RunSpec) -> bool:
    return run.grid in COMPACT_GRIDS and not keeps_every_log(run)


def _fit_reference(run: RunSpec, run_dir: Path, threads: int | None = None) -> Outcome:
    begin = time.perf_counter()
    flags = run.flags
    try:
        from threadpoolctl import threadpool_limits   # scikit-learn's: its OpenMP and BLAS threads
        # As many threads as a train.py run gets: gradient boosting's OpenMP threads spin-wait, and
        # beside other processes more threads than cores take 20 times as long.
        with threadpool_limits(limits=threads):
            references.write_reference_run(run_dir, run.reference, run.dataset, run.seed, run.fold, flags["folds"],
                                           flags["val_fraction"], flags.get("tune", False))
    except (ValueError, ImportError) as error:
        return Outcome(run, "failed", time.perf_counter() - begin, f"error: {error}")
    return Outcome(run, "done", time.perf_counter() - begin)


COMPACT_KEEPS = ("config.json", "summary.json", "metrics.csv", "tuning.csv")


def _drop_weights_and_log(run_dir: Path, log_path: Path, keep_model: bool = False, compact: bool = False) -> None:
    """results/ keeps the compact logs of a finished run, not its weights (but model.pt where
    ``keep_model``) or console output; a ``compact`` run keeps only COMPACT_KEEPS."""
    for weights in run_dir.glob("*.pt"):
        if not (keep_model and weights.name == "model.pt"):
            weights.unlink()
    if compact:
        for path in run_dir.iterdir():
            if path.name not in COMPACT_KEEPS:
                path.unlink()
    log_path.unlink(missing_ok=True)


def link_shared(run: RunSpec, owner: RunSpec, results: Path) -> Outcome:
    """``run``'s directory as a link to its owner's (the same key): one run, listed by both grids.
    A directory of its own (trained before runs were shared) is left as it is."""
    path = results / "runs" / run.grid / run.name
    if path.is_symlink() or path.exists():
        return Outcome(run, "skipped", detail="" if path.is_symlink() else "a run of its own (not linked)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(Path("..") / owner.grid / owner.name, target_is_directory=True)
    return Outcome(run, "linked", detail=f"same run as {owner.grid}/{owner.name}")


def run_all(runs: list[RunSpec], results: Path, data_dir, device, threads, shared: dict[str, RunSpec] | None = None,
            keep_keys: frozenset = frozenset(), allow_dirty: bool = False) -> list[Outcome]:
    """Train every run whose key it owns (``shared``: owner by key; default: each run its own),
    then link the others to their owners' directories."""
    shared = shared if shared is not None else {run.key: run for run in runs}
    outcomes = []
    begin = time.perf_counter()
    for i, run in enumerate(runs, 1):
        owner = shared.get(run.key, run)
        if owner is run:
            outcome = execute(run, results, data_dir, device, threads, run.key in keep_keys, allow_dirty)
        else:
            outcome = link_shared(run, owner, results)
        outcomes.append(outcome)
        print(f"[{i:>3}/{len(runs)}] {outcome.status:<7} {run.grid:<15} {run.name:<45} "
              f"{outcome.seconds:7.1f}s  {outcome.detail}", flush=True)
    failed = [o for o in outcomes if o.status == "failed"]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} runs finished "
          f"({sum(o.status == 'skipped' for o in outcomes)} already done) in {time.perf_counter() - begin:.0f}s")
    if failed:
        print("failed runs:\n" + "\n".join(f"  {o.run.grid}/{o.run.name}: {o.detail}" for o in failed))
    return outcomes


def with_owners(runs: list[RunSpec], shared: dict[str, RunSpec]) -> list[RunSpec]:
    """``runs`` with the owner of each key listed before its first sharer (a grid of its own
    may share a run that another grid trains)."""
    ordered, seen = [], set()
    for run in runs:
        for item in (shared.get(run.key, run), run):
            if id(item) not in seen:
                seen.add(id(item))
                ordered.append(item)
    return ordered


def _describe(run: RunSpec, shared: dict[str, RunSpec], data_dir: str | None) -> str:
    owner = shared.get(run.key, run)
    if owner is not run:
        return f"same run as {owner.grid}/{owner.name}"
    return f"scikit-learn reference {run.reference}" if run.reference else " ".join(run.argv(data_dir))


def dirty_refusal(results: Path, allow_dirty: bool, repo: Path = REPO_ROOT) -> str | None:
    """Why the sweep may not train into ``results``: a folder inside the repository, written from
    a tree whose code has uncommitted changes (then no commit names the code of its runs)."""
    try:
        Path(results).resolve().relative_to(Path(repo).resolve())
    except ValueError:
        return None                      # a folder of one's own: runs record their state anyway
    state = code_state(repo)
    if allow_dirty or not state.dirty:
        return None
    return (f"the code has uncommitted changes ({state.changed_files()}), so no commit would name the code of "
            "these runs; commit them and run from a clean worktree (git worktree add), or pass --allow-dirty "
            "(recorded in config.json)")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N): the I-th of N interleaved slices of the run list (1-based)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 1/2, got {text!r}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"shard I/N needs 1 <= I <= N, got {text!r}")
    return index, count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced grid: 1 epoch, fewer configurations")
    parser.add_argument("--grid", nargs="+", choices=GRIDS, help="run only these grids (default: all)")
    parser.add_argument("--dataset", nargs="+", metavar="TAG", choices=DATASET_TAGS,
                        help=f"run only the runs on these datasets ({', '.join(DATASET_TAGS)})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per configuration (default: {len(SEEDS)}, with --quick 2)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results directory")
    parser.add_argument("--data-dir", default=None, help="dataset root passed to train.py")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    parser.add_argument("--aggregate", action="store_true", help="only write results/summary.csv")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--verify", action="store_true",
                        help="rerun seed 0 of every configuration of the grids (--grid) at this commit, from a clean "
                             "tree, and compare with the committed logs (docs/study.md, 'Reproducing the study')")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="train into a results folder inside the repository although the code has uncommitted "
                             "changes (config.json records it)")
    parser.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="I/N",
                        help="run only every N-th run of the list, starting at the I-th (1 <= I <= N), so that "
                             "N processes or machines can share one grid; summary.csv is then rewritten by "
                             "whichever shard ends last, so run --aggregate once all have finished")
    args = parser.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else len(SEEDS))
    if seeds < 1:
        parser.error(f"--seeds must be >= 1 (got {seeds})")
    if args.verify:
        from .verify import verify_grids  # reruns and compares; nothing of it is needed to train
        return verify_grids(args.grid or list(GRIDS), args.results, args.data_dir)
    if not args.aggregate:
        every = with_seeds(quick_grid() if args.quick else full_grid(), range(seeds))
        shared = owners(every)
        runs = [r for r in every if (not args.grid or r.grid in args.grid)
                and (not args.dataset or r.dataset_tag in args.dataset)]
        runs = with_owners(runs, shared)
        index, count = args.shard
        runs = runs[index - 1::count]
        if args.list:
            print("\n".join(f"{r.grid}/{r.name}: " + _describe(r, shared, args.data_dir) for r in runs))
            return 0
        if not IN_CHECKOUT:
            print(f"error: the sweep runs train.py of a checkout, and this copy of moelab ({PACKAGE_DIR}) is installed "
                  "without one; "
                  "run sweep.py from project_moe/ of the repository", file=sys.stderr)
            return EXIT_BAD_INPUT
        if (refusal := dirty_refusal(args.results, args.allow_dirty)) is not None:
            print(f"error: {refusal}", file=sys.stderr)
            return EXIT_BAD_INPUT
        keep = frozenset(r.key for r in every if r.grid in KEEP_WEIGHTS)
        outcomes = run_all(runs, args.results, args.data_dir, args.device, args.threads, shared, keep,
                           args.allow_dirty)
    else:
        outcomes = []
    try:
        finished = logs.run_table(args.results)
    except RunFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if finished.empty:
        print(f"error: no completed run under {args.results / 'runs'}: run the grids first (python sweep.py), "
              "or point --results at the folder that holds them", file=sys.stderr)
        return EXIT_BAD_INPUT if args.aggregate else 1
    table = logs.aggregate(finished)
    args.results.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.results / "summary.csv", index=False)
    paired = comparisons.comparisons(finished)
    paired.to_csv(args.results / "comparisons.csv", index=False)
    print(f"wrote {args.results / 'summary.csv'} ({len(table)} configurations) and comparisons.csv "
          f"({len(paired)} paired comparisons)")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
