"""The README and docs/ say only what runs: the README's Python snippets run, every `distill ...`
command in README.md and docs/*.md parses with the CLI's own parser (parsed, never executed),
every `python -m` of this project's modules names one that runs as a script, every `make X`
names a Makefile target, every relative link points at a file that exists (and a
`#anchor` at a heading of that file), and the README's findings block is the rendering of
docs/findings.json (or says the findings are not measured yet while that file is missing)."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from flows.cli import _parser
from tasks.findings import NOT_MEASURED, README_END, README_START, findings_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages other branches add (the loss registry, performance, UI and scale-out pages): linked from
# here before they land, so a link to one of them is checked only once the file exists.
PAGES_ON_THEIR_WAY = {ROOT / "docs" / name for name in
                      ("losses.md", "performance.md", "ui.md", "scale-out.md")}
PYTHON_M = re.compile(r"python(?:3[.\d]*)? -m (\w+(?:\.\w+)*)(?![.\w])")  # not bench.<name>
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _fenced(text: str, languages=("", "bash", "sh", "console")) -> list[str]:
    return [body for language, body in FENCE.findall(text) if language in languages]


def _commands(page: Path, program: str) -> list[str]:
    """Command lines starting with program: inline code spans in the prose, and lines of shell
    code blocks (a trailing `# comment` and a trailing `&` dropped)."""
    text = page.read_text()
    spans = re.findall(rf"`({program} [^`]+)`", _prose(text))
    lines = [line.split(" #")[0].strip().removesuffix("&").strip() for block in _fenced(text)
             for line in block.splitlines() if line.strip().startswith(f"{program} ")]
    return [" ".join(c.split()) for c in spans + lines]


def _variants(usage: str) -> list[str]:
    """A usage line with optional parts as two commands: every [...] left out, every [...] put
    in (so `distill eval [--model DIR]` checks both `distill eval` and `--model DIR`)."""
    bare = usage.replace("…", "")
    without = bare
    while re.search(r"\[[^\[\]]*\]", without):
        without = re.sub(r"\[[^\[\]]*\]", "", without)
    return list(dict.fromkeys([without, bare.replace("[", "").replace("]", "")]))


def test_the_readme_python_snippets_run():
    snippets = [body for language, body in FENCE.findall((ROOT / "README.md").read_text())
                if language == "python"]
    assert snippets, "the README shows the loss in one call"
    for snippet in snippets:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(snippet, "README.md", "exec"), {})


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_distill_command_parses(page):
    parser = _parser()
    subcommands = parser._subparsers._group_actions[0].choices
    for usage in _commands(page, "distill"):
        words = usage.split()
        if len(words) == 2:  # prose naming a command (`distill run`): the command must exist
            assert words[1] in subcommands, f"{page.name}: no such command `{usage}`"
            continue
        for command in _variants(usage):
            try:
                with contextlib.redirect_stderr(io.StringIO()) as err:
                    parser.parse_args(shlex.split(command)[1:])
            except SystemExit:
                pytest.fail(f"{page.name}: `{usage}` does not parse as `{command}`: "
                            f"{err.getvalue().strip().splitlines()[-1]}")


def test_every_python_m_module_of_the_project_runs_as_a_script():
    packages = {"bench", "dashboards", "distill_core", "flows", "tasks"}
    named = {(page.name, module) for page in PAGES
             for module in PYTHON_M.findall(page.read_text())
             if module.split(".")[0] in packages}
    assert named, "the docs name the benchmarks' modules"
    not_scripts = [(name, module) for name, module in sorted(named)
                   if 'if __name__ == "__main__"' not in
                   (ROOT / (module.replace(".", "/") + ".py")).read_text()]
    assert not not_scripts, f"python -m of modules with no __main__ block: {not_scripts}"


def test_every_make_target_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):(?!=)", makefile, re.M))
    used = []
    for page in PAGES:
        for command in _commands(page, "make"):
            used += [(page.name, word) for word in shlex.split(command)[1:]
                     if "=" not in word]  # VARIABLE=value is not a target
    assert used, "the README names its make targets"
    missing = [(name, target) for name, target in used if target not in targets]
    assert not missing, f"make targets named in the docs but not in the Makefile: {missing}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", _prose(page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(page):
    links = re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if target in PAGES_ON_THEIR_WAY and not target.exists():
            continue
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no such heading)")
    assert not broken, f"{page.name}: broken links {broken}"


@pytest.mark.parametrize("page, summary, source", [
    ("README.md", True, "findings.json"), ("docs/study.md", False, "findings.json"),
    ("docs/real-weights.md", False, "findings-real-weights.json")])
def test_the_findings_blocks_are_rendered_from_the_committed_findings(page, summary, source):
    text = (ROOT / page).read_text()
    block = text.split(README_START)[1].split(README_END)[0].strip()
    findings = ROOT / "docs" / source
    if not findings.exists():
        assert block == NOT_MEASURED
    flag = "--readme" if summary else "--study"
    assert block == findings_markdown(findings, summary=summary), (
        f"{page}'s findings block is stale: run `distill findings docs/{source} {flag} {page}`")


def test_the_readme_stays_a_front_door():
    """The README is the front door (the two set-up commands, the file tree, one command per
    flow): at most 150 lines; tables and measurements live in docs/."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 150, f"README.md has {lines} lines: move detail into docs/"
