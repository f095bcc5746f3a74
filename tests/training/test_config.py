"""moelab/training/config.py: flags checked before anything is written, one line and exit 2."""
import pytest
from runs import base_args, cli

from moelab.training import launch
from moelab.training.config import Config, ConfigError, build_parser, config_record, parse_args, validate
from moelab.training.exits import EXIT_BAD_INPUT

BAD_INPUTS = [
    (["--experts", "0"], "--experts"),
    (["--gating", "topk", "--top-k", "5", "--experts", "4"], "--top-k"),
    (["--gating", "topk", "--top-k", "0"], "--top-k"),
    (["--capacity-factor", "0"], "--capacity-factor"),
    (["--router-jitter", "1"], "--router-jitter"),
    (["--capacity-factor", "-1"], "--capacity-factor"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--dataset", "folder:/nonexistent/place"], "/nonexistent/place"),
    (["--trunk", "cnn", "--expert-type", "cnn"], "--trunk"),
    (["--val-fraction", "1.0"], "--val-fraction"),
    (["--run-name", "../escape"], "--run-name"),
]


@pytest.mark.parametrize("extra,named", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, tiny_data, capsys, extra, named):
    code = launch.main(base_args(tmp_path, tiny_data) + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and named in err
    assert not (tmp_path / "runs").exists()


def test_unwritable_out_is_rejected(tmp_path, tiny_data, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = base_args(tmp_path, tiny_data)
    args[args.index("--out") + 1] = str(blocker / "runs")
    assert launch.main(args) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not writable" in err
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("args, message", [
    (("--dataset", "iris", "--target", "x"), "--target names the column"),
    (("--dataset", "mnist", "--expert-variance"), "--expert-variance is for a regression"),
    (("--dataset", "diabetes", "--expert-variance"), "add --combine probs"),
    (("--dataset", "iris", "--expert-variance", "--combine", "probs"), "iris is a classification"),
    (("--dataset", "iris", "--fold", "5"), "--fold must be in 0..4"),
    (("--dataset", "iris", "--arch", "vit"), "is a table of features"),
])
def test_flags_a_table_cannot_take_are_refused(tmp_path, capsys, args, message):
    assert cli(tmp_path, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_run_name_tells_two_targets_of_one_csv_apart(tmp_path):
    from moelab.training.config import parse_args
    names = {parse_args(["--dataset", f"csv:{tmp_path / 't.csv'}", "--target", target]).default_run_name()
             for target in ("kind", "price")}
    assert len(names) == 2 and all("-f0of5-" in name for name in names)


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("flags, says", [
    ("--gating expert-choice", "--gating expert-choice cannot route a causal language model"),
    ("--gating soft-slots", "--gating soft-slots cannot route a causal language model"),
    ("--router-score attention", "--router-score attention"),
    ("--router-score attention --gating topk", "--router-score attention"),
    ("--drop-policy priority", "--drop-policy priority"),
    ("--drop-policy priority --gating topk", "--drop-policy priority"),
    ("--drop-policy position --gating topk", "--drop-policy position"),
])
def test_routers_that_see_later_bytes_are_refused(tmp_path, capsys, flags, says):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to model\n" * 40)
    out = tmp_path / "runs"
    for dataset in (f"text:{corpus}", "python-stdlib"):
        code = launch.main(f"--arch gpt --dataset {dataset} --out {out} --threads 1 {flags}".split())
        err = capsys.readouterr().err.strip()
        assert code == EXIT_BAD_INPUT, (dataset, err)
        assert err.startswith("error:") and says in err and "\n" not in err
        assert not out.exists()


def test_text_needs_gpt_gpt_needs_text_and_a_classifier_may_choose_experts(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to model\n" * 40)
    out = tmp_path / "runs"
    for argv, says in (([f"--dataset=text:{corpus}"], "needs --arch gpt"),
                       (["--dataset", f"csv-text:{tmp_path}"], "needs --arch gpt"),
                       (["--dataset", "python-stdlib", "--arch", "vit"], "needs --arch gpt"),
                       (["--arch", "gpt", "--dataset", "mnist"], "--arch gpt reads bytes"),
                       (["--arch", "gpt", "--dataset", f"csv-text:{tmp_path}", "--steps-per-epoch", "5"],
                        "--steps-per-epoch")):
        assert launch.main([*argv, "--out", str(out), "--threads", "1"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and says in err and "\n" not in err, err
    assert not out.exists()
    for extra in (["--gating", "expert-choice"], ["--gating", "soft-slots"], ["--router-score", "attention"],
                  ["--drop-policy", "priority", "--gating", "topk"]):
        cfg = parse_args(["--dataset", f"csv-text:{tmp_path}", "--arch", "gpt", "--out", str(out), *extra])
        validate(cfg)                                                      # a classifier sees whole texts
        assert not cfg.model_spec().causal
    dense = parse_args(["--dataset", "python-stdlib", "--arch", "gpt", "--model", "dense", "--out", str(out)])
    validate(dense)
    with pytest.raises(ConfigError):
        validate(parse_args(["--dataset", "python-stdlib", "--arch", "gpt", "--gating", "expert-choice",
                             "--out", str(out)]))


def test_drop_policy_is_refused_where_nothing_is_dropped(tmp_path, capsys):
    code = launch.main(["--gating", "expert-choice", "--drop-policy", "position", "--out", str(tmp_path / "r")])
    assert code == 2 and not (tmp_path / "r").exists()
    err = capsys.readouterr().err.strip()
    assert "--drop-policy" in err and "--gating expert-choice" in err and err.count("\n") == 0


def test_config_json_lists_the_settings_in_the_order_of_the_flags():
    """The router's fields are inherited from RouterConfig; config.json and the parser still list them after
    --experts, where a reader of `train.py --help` finds them."""
    flags = [action.dest for action in build_parser()._actions if action.dest != "help"]
    assert list(config_record(Config())) == flags
    assert flags.index("gating") == flags.index("experts") + 1
