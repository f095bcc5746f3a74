"""moelab is one importable package: it imports from any directory, imports only itself and
third-party libraries (never a script of project_moe/), and the scripts are thin command lines."""
import ast
import pathlib
import subprocess
import sys

import moelab

PACKAGE = pathlib.Path(moelab.__file__).resolve().parent
SCRIPTS = ("train", "sweep", "analysis", "bench", "build_report", "gpu_check", "moe_model")


def test_the_package_imports_from_any_directory_without_the_scripts(tmp_path):
    every_module = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
                          for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    code = ("import importlib, sys\n"
            "from moelab import MoE, build_router\n"
            f"for name in {every_module!r}:\n"
            "    importlib.import_module(name)\n"
            f"loaded = sorted(set({SCRIPTS!r}) & set(sys.modules))\n"
            "assert not loaded, loaded\n"
            "print(MoE.__module__, build_router.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["moelab.layers.moe", "moelab.layers.routers"]


def test_modules_of_the_package_import_each_other_relatively():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] not in ("moelab", *SCRIPTS), f"{path}: from {node.module} import"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in ("moelab", *SCRIPTS), f"{path}: import {alias.name}"


def test_scripts_are_command_lines_over_the_package():
    project = PACKAGE.parent
    for name in SCRIPTS[:-1]:
        tree = ast.parse((project / f"{name}.py").read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert imported and all(module.startswith("moelab.") for module in imported), (name, imported)
        assert len([node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]) == 0, name


def test_the_shipped_mnist_copy_text_corpus_and_molecules_are_package_data():
    assets = sorted(p.name for p in (PACKAGE / "assets" / "mnist").iterdir())
    assert assets == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                      "train-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in (PACKAGE / "assets" / "text").iterdir()) == [
        "LICENSE.txt", "cpython-3.11.7-lib.tar.xz", "rotten_tomatoes_NOTICE.txt", "rotten_tomatoes_corpus_full.csv.bz2"]
    assert sorted(p.name for p in (PACKAGE / "assets" / "molecules").iterdir()) == [
        "solubility.test.sdf.bz2", "solubility.train.sdf.bz2", "solubility_NOTICE.txt"]
    import tomllib
    pyproject = tomllib.loads((PACKAGE.parent.parent / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-data"]["moelab"] == [
        "assets/mnist/*.gz", "assets/text/*.tar.xz", "assets/text/*.csv.bz2", "assets/text/*.txt",
        "assets/molecules/*.sdf.bz2", "assets/molecules/*.txt"]


def test_the_layers_and_models_import_without_the_data_training_and_study_stacks(tmp_path):
    code = ("import sys\n"
            "import moelab.layers, moelab.models\n"
            "from moelab.layers import MoE, build_router, MLPExperts\n"
            "moe = MoE(build_router('topk', 6, 4, top_k=2), MLPExperts(4, 6, 8, 3))\n"
            "import torch\n"
            "assert moe(torch.randn(5, 6)).logits.shape == (5, 3)\n"
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    third_party = [name for name in ("pandas", "matplotlib", "seaborn", "sklearn", "scipy", "torchvision")
                   if name in loaded]
    assert not third_party, third_party
    # the models read the byte vocabulary from data.types (torch only), the router's configuration
    # its flag fields from options.py (dataclasses only); no loader, dataset or run code
    own = [name for name in loaded if name.startswith("moelab.") and
           not name.startswith(("moelab.layers", "moelab.models")) and
           name not in ("moelab.exports", "moelab.options", "moelab.data", "moelab.data.types")]
    assert not own, own


def test_one_front_door_that_moe_model_re_exports():
    import moe_model
    assert moe_model.__all__ == moelab.__all__
    for name in moelab.__all__:
        assert getattr(moe_model, name) is getattr(moelab, name), name
        # each name says where it lives: the module of its definition is inside the package
        obj = getattr(moelab, name)
        home = getattr(obj, "__module__", None)
        assert home is None or home.startswith("moelab."), (name, home)
