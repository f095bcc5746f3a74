"""The README and docs/ stay true to the code: the flag reference is the one the parser gives,
every relative link leads to a file, every page is in the README's index, and the README stays short."""
import re
from pathlib import Path

from moelab.paths import REPO_ROOT
from moelab.training import cli_reference
from moelab.training.config import build_parser

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
CLI_PAGE = DOCS / "cli.md"
README_MAX_WORDS = 1800

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)        # http:, https:, mailto:, ...


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
    found = re.search(r"^## Documentation\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found, "README.md has no '## Documentation' section (the index of docs/)"
    index = {Path(target.split("#", 1)[0]).as_posix() for target in LINK.findall(found.group(1))}
    missing = [f"docs/{page.name}" for page in sorted(DOCS.glob("*.md")) if f"docs/{page.name}" not in index]
    assert not missing, f"docs pages missing from the README's Documentation index: {missing}"
