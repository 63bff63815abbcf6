"""docs/flags.md is what scripts/flag_reference.py writes, and lists exactly the flags of --help."""

import re
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import flag_reference  # noqa: E402
from bnonly.config import build_parser  # noqa: E402


def help_flags() -> set:
    """The option strings at the start of --help's option lines (argparse never wraps those)."""
    flags = set()
    for line in build_parser().format_help().splitlines():
        match = re.match(r"^  (-.*?)(?:\s{2,}|$)", line)
        if match:
            flags.update(part.split()[0] for part in match.group(1).split(", "))
    return flags - {"-h", "--help"}


def test_flag_reference_is_up_to_date(capsys):
    status = flag_reference.main(["--check"])
    assert status == 0, capsys.readouterr().err


def test_flag_reference_lists_the_flags_of_help():
    documented = set()
    for line in (REPO / "docs" / "flags.md").read_text().splitlines():
        if line.startswith("- `"):
            documented.update(item.split()[0] for item in re.findall(r"`([^`]+)`", line))
    assert len(help_flags()) > 60 and documented == help_flags()


def test_check_fails_on_a_stale_reference(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "flags.md"
    stale.write_text(flag_reference.reference().replace("--seed", "--sead"))
    monkeypatch.setattr(flag_reference, "OUTPUT", str(stale))
    assert flag_reference.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def anchors(markdown: str) -> set:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces as -."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


def test_readme_fits_on_a_screen_and_its_links_and_those_of_docs_resolve():
    assert len((REPO / "README.md").read_text()) < 12_000
    pages = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in anchors(linked.read_text()), f"{page.name}: {target}"
