"""The README and docs/ stay true to the code: the flag reference is the one the parser gives,
every relative link leads to a file, every page is in the README's index, the README stays short and
its layout names every module, every "Table N" / "Fig. N" is the report's table or figure on that
subject, and the commands that take seconds run as a fresh clone runs them."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moelab.paths import PROJECT_DIR, REPO_ROOT
from moelab.training import cli_reference
from moelab.training.config import build_parser

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
CLI_PAGE = DOCS / "cli.md"
README_MAX_WORDS = 1800

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)        # http:, https:, mailto:, ...


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [target for target in LINK.findall(text) if not EXTERNAL.match(target) and not target.startswith("#")]


def test_the_flag_table_of_docs_cli_is_the_one_the_parser_gives():
    block = cli_reference.generated_block(CLI_PAGE.read_text())
    assert block is not None, f"docs/cli.md lost its markers {cli_reference.BEGIN!r} ... {cli_reference.END!r}"
    assert block == cli_reference.cli_markdown(), (
        f"docs/cli.md is out of date with train.py's flags: run `{cli_reference.REGENERATE}` and commit docs/cli.md")


def test_every_flag_of_the_parser_is_in_docs_cli():
    text = CLI_PAGE.read_text()
    flags = [option for action in build_parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"]
    assert flags
    missing = [flag for flag in flags if not re.search(re.escape(flag) + r"(?![\w-])", text)]
    assert not missing, f"flags missing from docs/cli.md: {missing}; run `{cli_reference.REGENERATE}`"


def test_the_check_command_accepts_the_committed_page(capsys):
    assert cli_reference.main(["--check"]) == 0


def test_every_relative_link_of_the_readme_and_docs_points_to_a_file():
    broken = []
    for page in pages():
        for target in relative_links(page):
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_readme_stays_short():
    words = len(README.read_text().split())
    assert words <= README_MAX_WORDS, (
        f"README.md has {words} words (at most {README_MAX_WORDS}): move the detail to a page of docs/")


def test_every_docs_page_is_in_the_readme_index():
    text = README.read_text()
    found = re.search(r"^## Documentation\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert found, "README.md has no '## Documentation' section (the index of docs/)"
    index = {Path(target.split("#", 1)[0]).as_posix() for target in LINK.findall(found.group(1))}
    missing = [f"docs/{page.name}" for page in sorted(DOCS.glob("*.md")) if f"docs/{page.name}" not in index]
    assert not missing, f"docs pages missing from the README's Documentation index: {missing}"


# --- "Table N" / "Fig. N" of the README and docs/ are the report's --------------------------------

REPORT_DIR = REPO_ROOT / "project_moe" / "report"
TEX_INPUT = re.compile(r"\\input\{([^}]+)\}")
TEX_COMMENT = re.compile(r"(?<!\\)%.*$", re.MULTILINE)
# In document order: a float opens or closes, a caption (\captionof{kind} names its kind), a label.
TEX_EVENT = re.compile(r"\\(begin|end)\{(table|figure)\*?\}|\\captionof\{(table|figure)\}|\\caption\b|\\label\{([^}]+)\}")
CITATION = re.compile(r"\b(Tables?|Figs?\.|Figures?)\s+(\d+(?:(?:\s*,\s*|\s+and\s+|\s*[-–]\s*)\d+)*)")

# What each float of the report is about: a citing paragraph (or list item) of a doc names at least
# one of these, so that a citation of the wrong table fails even when that number exists. Every
# labelled float needs an entry (test below); matched case-insensitively as substrings.
FLOAT_TOPICS = {
    "tab:hyper": ("settings", "hyperparameter", "learning rate", "recipe"),
    "fig:pays": ("dense", "where moe pays", "paired"),
    "tab:gating": ("router", "gating"),
    "fig:activations": ("activation", "gate", "router"),
    "fig:classes": ("class", "speciali", "seed"),
    "fig:expertloss": ("loss",),
    "tab:lm": ("language model", "bits per byte", "`lm`", "lm_rows"),
    "tab:tabular": ("tabular", "iris", "wine", "diabetes", "breast"),
}


def expanded_tex(path: Path) -> str:
    """The LaTeX source with every \\input replaced by its file (paths relative to report/) and
    comments removed, in the order LaTeX reads it."""
    text = TEX_COMMENT.sub("", path.read_text())

    def inline(match: re.Match) -> str:
        name = match.group(1) if match.group(1).endswith(".tex") else match.group(1) + ".tex"
        return expanded_tex(REPORT_DIR / name)
    return TEX_INPUT.sub(inline, text)


def report_floats() -> dict[str, list[str | None]]:
    """{"table": [label of Table 1, ...], "figure": [...]}: every caption of report.tex, numbered as
    LaTeX numbers them (a caption inside a table float is a table unless \\captionof says otherwise);
    None for a caption without a label."""
    floats = {"table": [], "figure": []}
    environment, last = None, None
    for match in TEX_EVENT.finditer(expanded_tex(REPORT_DIR / "report.tex")):
        opens, env, caption_kind, label = match.groups()
        if opens:
            environment = env if opens == "begin" else None
        elif label is not None:
            if environment and last is not None and floats[last][-1] is None:
                floats[last][-1] = label
        else:
            last = caption_kind or environment
            assert last, f"report.tex: a \\caption outside a table or figure at {match.start()}"
            floats[last].append(None)
    return floats


def doc_blocks(page: Path) -> list[tuple[int, str]]:
    """(first line number, text) of every paragraph, list item, table row and heading of a
    markdown page outside fenced code."""
    blocks, current, start, fenced = [], [], 0, False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            line = ""
        starts_block = not line.strip() or fenced or re.match(r"\s*([*-]|\d+\.)\s|\s*#|\s*\|", line)
        if starts_block and current:
            blocks.append((start, "\n".join(current)))
            current = []
        if line.strip() and not fenced:
            if not current:
                start = number
            current.append(line)
    if current:
        blocks.append((start, "\n".join(current)))
    return blocks


def cited_floats(page: Path) -> list[tuple[int, str, int, str]]:
    """(line, kind, number, citing block) of every "Table N" / "Fig. N" / "Figure N" of a page."""
    cited = []
    for start, block in doc_blocks(page):
        for offset, line in enumerate(block.splitlines()):
            for word, numbers in CITATION.findall(line):
                kind = "table" if word.startswith("Table") else "figure"
                for part in re.split(r"\s*,\s*|\s+and\s+", numbers):
                    low, _, high = part.replace("–", "-").partition("-")            # "3", or "1-3"
                    span = range(int(low), int(high or low) + 1)
                    cited += [(start + offset, kind, number, block) for number in span]
    return cited


def test_the_report_numbering_is_latex_s_own_when_a_current_build_is_at_hand():
    """The parse of report.tex against the .aux of the last build (ignored by git, so only where
    the report was built, and only when that build is newer than every .tex source)."""
    aux = REPORT_DIR / "report.aux"
    sources = list(REPORT_DIR.rglob("*.tex"))
    if not aux.exists() or aux.stat().st_mtime < max(path.stat().st_mtime for path in sources):
        pytest.skip("no build of the report newer than its sources (build_report.py writes report.aux)")
    latex = dict(re.findall(r"\\newlabel\{((?:tab|fig):[^}]+)\}\{\{(\d+)\}", aux.read_text()))
    parsed = {label: str(index) for labels in report_floats().values()
              for index, label in enumerate(labels, 1) if label}
    assert parsed == latex


def test_every_labelled_float_of_the_report_has_its_topics():
    labels = [label for labels in report_floats().values() for label in labels]
    assert len(labels) >= 8                      # 4 tables and 4 figures at least
    assert None not in labels, "a caption of report.tex has no \\label"
    missing = [label for label in labels if label not in FLOAT_TOPICS]
    assert not missing, f"add the floats {missing} to FLOAT_TOPICS in tests/test_docs.py"


def test_every_table_and_figure_a_doc_cites_exists_in_the_report():
    floats = report_floats()
    missing = [f"{page.relative_to(REPO_ROOT)}:{line}: {kind.title()} {number} (the report has "
               f"{len(floats[kind])} {kind}s)"
               for page in pages() for line, kind, number, _ in cited_floats(page)
               if not 1 <= number <= len(floats[kind])]
    assert not missing, "citations of tables or figures the report does not have:\n" + "\n".join(missing)


def test_every_table_and_figure_a_doc_cites_is_about_what_the_doc_says():
    floats = report_floats()
    wrong = []
    for page in pages():
        for line, kind, number, block in cited_floats(page):
            if not 1 <= number <= len(floats[kind]):
                continue                                    # the test above names it
            label = floats[kind][number - 1]
            topics = FLOAT_TOPICS.get(label, ())
            if not any(topic in block.lower() for topic in topics):
                wrong.append(f"{page.relative_to(REPO_ROOT)}:{line}: {kind.title()} {number} is {label} "
                             f"(about {' / '.join(topics)}), which its paragraph never mentions")
    assert not wrong, "citations of the wrong table or figure:\n" + "\n".join(wrong)


# --- the commands of the README and docs that take seconds, as a fresh clone runs them -------------

SCRIPTS = sorted(path.name for path in PROJECT_DIR.glob("*.py") if '__name__ == "__main__"' in path.read_text())
QUICK_COMMANDS = [                      # besides every script's --help; each a few seconds
    ["sweep.py", "--list"],
    ["sweep.py", "--grid", "tabular", "--list"],
    ["sweep.py", "--quick", "--list"],
    ["analysis.py", "sharpness", "--help"],
]
SAMPLE_COMMAND = re.compile(r"python sample\.py (results/[^\s`]+)")


def run_in_project(args: list[str], timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_the_scripts_are_the_ones_the_readme_lists():
    assert len(SCRIPTS) >= 6
    layout = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", README.read_text(), re.DOTALL | re.MULTILINE).group(1)
    scripts_line = next(line for line in layout.splitlines() if "the command lines" in line)
    listed = sorted(scripts_line.split("the command lines")[0].split())
    assert listed == SCRIPTS, f"README.md's Layout lists the scripts {listed}; project_moe/ has {SCRIPTS}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script):
    done = run_in_project([script, "--help"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}"), done.stdout[:200]


@pytest.mark.parametrize("command", QUICK_COMMANDS, ids=" ".join)
def test_the_quick_commands_of_the_docs_run(command):
    done = run_in_project(command)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_sample_py_runs_at_once_on_every_committed_run_a_doc_gives_it():
    """A doc that gives ``python sample.py results/...`` promises weights a fresh clone has: they
    must be tracked by git (``*.pt`` under results/ is ignored unless .gitignore makes an exception)."""
    cited = [(page, run) for page in pages() for run in SAMPLE_COMMAND.findall(page.read_text())]
    if not cited:
        return
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: which files a clone has is unknown")
    for page, run in cited:
        weights = f"project_moe/{run.rstrip('/')}/best.pt"
        tracked = subprocess.run(["git", "ls-files", "--", weights], cwd=REPO_ROOT, capture_output=True, text=True,
                                 check=False)
        assert tracked.stdout.strip(), f"{page.relative_to(REPO_ROOT)} runs sample.py on {run}, whose {weights} git ignores"
        done = run_in_project(["sample.py", run, "--tokens", "20", "--seed", "0"])
        assert done.returncode == 0, done.stderr


def test_the_layout_of_the_readme_names_every_module_of_moelab():
    layout = re.search(r"^## Layout\n+```\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE).group(1)
    sections, folder = {}, None                           # folder -> its text in the layout block
    for line in layout.splitlines():
        found = re.match(r"    (\w+)/\s", line)
        folder = found.group(1) if found else folder if line.startswith(" " * 8) else None
        sections[folder] = sections.get(folder, "") + line + "\n"
    missing = []
    for path in sorted((PROJECT_DIR / "moelab").rglob("*.py")):
        relative = path.relative_to(PROJECT_DIR / "moelab")
        if path.name == "__init__.py":
            continue
        text = sections.get(relative.parent.name, "") if len(relative.parts) == 2 else layout
        if not re.search(rf"(?<![\w/]){re.escape(path.name)}", text):
            missing.append(relative.as_posix())
    assert not missing, f"README.md's Layout does not name {missing}"
