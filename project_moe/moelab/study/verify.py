"""Does the committed study still come out of the code? ``python sweep.py --verify [--grid G ...]``.

For every configuration of a grid (seed 0; the tabular grid: fold 0), the run in results/ is
trained again at this commit, from the command line its config.json records (with the threads
and logging interval it recorded), and its logs are compared with the committed ones:

* for its whole budget where that is cheap, or for its first ``Grid.verify_epochs`` epochs (the
  process is stopped once they are logged: the schedule is the full run's);
* metrics.csv on those epochs, every column but the timings, and for a whole run the test scores
  of summary.json.

On the CPU family that ran the committed run (config.json's ``cpu_model``) and with its thread
count, training is deterministic: the numbers must be equal to the last digit. On another family
(or for a run that did not record its CPU) float rounding differs, so the comparison allows
ACCURACY_TOLERANCE on accuracies and R^2 and LOSS_TOLERANCE (relative) on the other columns
(docs/study.md, "Reproducing the study", says how they were measured).

One line per grid: reproduces / differs (which run, column, by how much) / not checked (why).
"""
from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import resolve_data_dir
from ..paths import PROJECT_DIR
from ..training.exits import EXIT_BAD_INPUT
from ..training.provenance import DATA_DIR_TOKEN, PortablePaths, code_state, cpu_family, cpu_model
from ..training.run_files import RunFileError, read_json
from .grids import GRIDS, RunSpec, runs, shared_runs

# Settings replaced when a recorded command line is run again: where it writes and reads, and
# how it resumes; the values that take their place are this verification's. The step timing that
# follows training (--step-time-rounds) is left out: it changes no number compared.
REPLACED_FLAGS = {"--out": 1, "--run-name": 1, "--data-dir": 1, "--device": 1, "--threads": 1, "--log-every": 1,
                  "--resume": 0, "--overwrite": 0, "--step-time-rounds": 1}
TIMING_COLUMNS = {"samples_per_s", "epoch_time_s", "wall_time_s"}
TEST_SCORES = ("test_acc", "test_loss", "test_bpb", "test_rmse", "test_mae", "test_r2")
ACCURACY_TOLERANCE = 0.005     # absolute, on accuracies and R^2, across CPU families
LOSS_TOLERANCE = 0.05          # relative, on losses and every other column, across CPU families


@dataclass
class Check:
    run: str             # grid/run-name of the committed run
    status: str          # same (to the last digit) | within (the tolerance) | differs | not checked
    detail: str = ""


def sample(grid: str) -> list[RunSpec]:
    """The configurations of ``grid`` a verification reruns: seed 0 of each, fold 0 of a table."""
    return [run for run in runs(grid) if run.fold in (None, 0)]


def rerun_argv(config: dict, out: Path, data_dir: Path) -> list[str]:
    """The recorded command line with this verification's output and data directory, and the
    recorded device type, thread count and logging interval (which change rounding and the
    logged steps)."""
    env, settings = config["environment"], config["config"]
    recorded, kept, skip = env["argv"][1:], [], 0
    for arg in recorded:
        if skip:
            skip -= 1
        elif arg in REPLACED_FLAGS:
            skip = REPLACED_FLAGS[arg]
        else:
            kept.append(arg)
    recorded_dir = settings.get("data_dir")
    paths = PortablePaths(data_dir)
    local = [paths.local(arg) for arg in kept]
    if recorded_dir and DATA_DIR_TOKEN not in recorded_dir:     # a run recorded before paths were portable
        local = [arg.replace(recorded_dir, str(data_dir)) for arg in local]
    device = "cuda" if str(env.get("device", "cpu")).startswith("cuda") else "cpu"
    return [*local, "--out", str(out), "--run-name", "rerun", "--data-dir", str(data_dir), "--device", device,
            "--threads", str(env.get("threads") or 1), "--log-every", str(settings.get("log_every", 100))]


def train_prefix(argv: list[str], run_dir: Path, epochs: int | None, log: Path) -> int:
    """Run train.py; with ``epochs``, stop it (SIGTERM: it ends after the current step) once
    metrics.csv holds that many epochs. The exit code; 0 for a run stopped on purpose."""
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "train.py"), *argv], stdout=handle,
                                   stderr=subprocess.STDOUT, cwd=PROJECT_DIR)
        while process.poll() is None:
            if epochs is not None and _logged_epochs(run_dir / "metrics.csv") >= epochs:
                process.send_signal(signal.SIGTERM)
                process.wait()
                return 0
            time.sleep(0.5)
    return process.returncode


def _logged_epochs(path: Path) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    return max(text.count("\n") - 1, 0)


def _rows(path: Path, epochs: int | None) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if epochs is None or int(row["epoch"]) <= epochs]


def _accuracy_like(column: str) -> bool:
    return column.endswith(("_acc", "_r2")) or column == "test_acc"


def compare_values(committed: dict[str, str], rerun: dict[str, str], exact: bool, where: str) -> list[str]:
    """The differences between two records of the same columns (pure): equal strings when
    ``exact``, else within the tolerances; ``where`` prefixes each difference."""
    found = []
    for column, old in committed.items():
        if column in TIMING_COLUMNS or column not in rerun:
            continue
        new = rerun[column]
        if old == new or (old in ("", "None", "nan") and new in ("", "None", "nan")):
            continue
        try:
            a, b = float(old), float(new)
        except ValueError:
            found.append(f"{where} {column} {old!r} vs {new!r}")
            continue
        if math.isnan(a) and math.isnan(b):
            continue
        if not exact:
            allowed = ACCURACY_TOLERANCE if _accuracy_like(column) else LOSS_TOLERANCE * max(abs(a), 1e-8)
            if abs(a - b) <= allowed:
                continue
        change = f"{b - a:+.4g}" if _accuracy_like(column) else f"{(b - a) / a:+.2%}" if a else f"{b - a:+.4g}"
        found.append(f"{where} {column} {a:.6g} vs {b:.6g} ({change})")
    return found


def check_run(run_dir: Path, epochs: int | None, data_dir: Path, work: Path) -> Check:
    """Train the committed run ``run_dir`` again (its first ``epochs`` or all) and compare."""
    name = f"{run_dir.parent.name}/{run_dir.name}"
    try:
        config = read_json(run_dir / "config.json")
        summary = read_json(run_dir / "summary.json")
    except RunFileError as error:
        return Check(name, "not checked", f"no committed run ({error.problem})")
    if summary.get("status") != "completed":
        return Check(name, "not checked", "the committed run did not complete")
    out = work / run_dir.name
    code = train_prefix(rerun_argv(config, out, data_dir), out / "rerun", epochs, work / f"{run_dir.name}.log")
    if code != 0:
        tail = (work / f"{run_dir.name}.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
        return Check(name, "not checked" if code == EXIT_BAD_INPUT else "differs", f"rerun exit {code}: {tail[0]}")
    recorded = config["environment"].get("cpu_model")
    same_family = cpu_family(recorded) == cpu_family(cpu_model())
    committed, rerun = _rows(run_dir / "metrics.csv", epochs), _rows(out / "rerun" / "metrics.csv", epochs)
    pairs = list(zip(committed, rerun))
    if epochs is None:
        new_summary = read_json(out / "rerun" / "summary.json")
        pairs.append(({"epoch": "test", **{k: str(summary.get(k)) for k in TEST_SCORES}},
                      {"epoch": "test", **{k: str(new_summary.get(k)) for k in TEST_SCORES}}))

    def differences(exact: bool) -> list[str]:
        found = [] if len(committed) == len(rerun) else [f"{len(rerun)} epochs logged against {len(committed)}"]
        for old, new in pairs:
            where = "test" if old["epoch"] == "test" else f"epoch {old['epoch']}"
            found += compare_values({k: v for k, v in old.items() if k != "epoch"}, new, exact, where)
        return found

    if not differences(exact=True):
        return Check(name, "same")
    found = differences(exact=same_family)      # another CPU family, or one not recorded: the tolerance
    if found:
        return Check(name, "differs", "; ".join(found[:3]) + (f"; {len(found) - 3} more" if len(found) > 3 else ""))
    return Check(name, "within", "CPU not recorded" if recorded is None else f"committed on {recorded}")


def verify_grid(grid: str, results: Path, data_dir: Path, work: Path, shared: dict[str, RunSpec],
                done: dict[str, Check] | None = None) -> tuple[str, bool]:
    """The line of one grid, and whether it reproduces. ``done``: the checks of runs already
    rerun for another grid (a run several grids share is trained once, and checked once)."""
    spec = GRIDS[grid]
    done = {} if done is None else done
    checks, seen = [], set()
    for run in sample(grid):
        if run.key in seen or run.reference:
            continue                      # one check per run; scikit-learn fits are not train.py runs
        seen.add(run.key)
        owner = shared.get(run.key, run)
        if run.key not in done:
            done[run.key] = check_run(results / "runs" / owner.grid / owner.name, spec.verify_epochs, data_dir, work)
        checks.append(done[run.key])
    budget = "whole runs" if spec.verify_epochs is None else f"first {spec.verify_epochs} epoch(s)"
    unchecked = [c for c in checks if c.status == "not checked"]
    differing = [c for c in checks if c.status == "differs"]
    if not checks or len(unchecked) == len(checks):
        why = unchecked[0].detail if unchecked else "no configuration"
        return f"{grid}: not checked ({why})", False
    if differing:
        first = differing[0]
        return (f"{grid}: differs in {len(differing)} of {len(checks)} runs ({budget}); {first.run}: {first.detail}",
                False)
    exact = sum(c.status == "same" for c in checks)
    within = [c for c in checks if c.status == "within"]
    how = f"{exact} equal to the last digit" + (
        f", {len(within)} within the tolerance ({', '.join(sorted({c.detail for c in within}))})" if within else "")
    left = f"; {len(unchecked)} not checked ({unchecked[0].detail})" if unchecked else ""
    return f"{grid}: reproduces ({len(checks) - len(unchecked)} runs, {budget}: {how}){left}", not unchecked


def verify_grids(grids: list[str], results: Path, data_dir: str | None) -> int:
    """Print one line per grid; 0 when every grid reproduces, 1 otherwise, 2 from a dirty tree."""
    state = code_state()
    if state.dirty:
        print(f"error: the code has uncommitted changes ({state.changed_files()}): a verification "
              "checks a commit; commit or stash them, or verify from a clean worktree (git worktree add)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"verifying at commit {(state.commit or 'unknown')[:12]} on {cpu_model()}", flush=True)
    shared = shared_runs((0,))
    all_ok, done = True, {}
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moelab-verify-") as tmp:
        for grid in grids:
            start = time.perf_counter()
            line, ok = verify_grid(grid, Path(results), resolve_data_dir(data_dir), Path(tmp), shared, done)
            all_ok &= ok
            print(f"{line} [{time.perf_counter() - start:.0f} s]", flush=True)
    print(f"{'every grid reproduces' if all_ok else 'some grids do not reproduce'} "
          f"({time.perf_counter() - begin:.0f} s)")
    return 0 if all_ok else 1
