"""The findings blocks: a findings.json rendered by tasks.findings (nulls included) — every effect
(docs/study.md's) or one row per claim (the README's) — rewritten in place by `distill findings
... --readme ... --study ...`, and 'not measured yet' without one."""

import json

import pytest

from flows.cli import main
from tasks.findings import (
    NOT_MEASURED,
    README_END,
    README_START,
    Effect,
    Finding,
    findings_document,
    findings_markdown,
    update_readme,
)

# The short form of docs/findings.json: a list of claims, one effect each, nulls allowed.
FLAT = [
    {"id": "C1", "claim": "reverse KL: higher Avg@k", "effect": 0.12, "interval": [0.02, 0.21],
     "verdict": "reproduced"},
    {"id": "C2", "claim": "student prefixes win", "effect": -0.05, "interval": [-0.09, -0.01],
     "verdict": "opposite"},
    {"id": "C3", "claim": "λ = 0.25 keeps entropy", "effect": 0.01, "interval": [None, 0.04],
     "verdict": "inconclusive"},
    {"id": "C4", "claim": "the curriculum wins", "effect": None, "interval": None,
     "verdict": None},
    {"id": "C5", "claim": "forward students gain more from GRPO"},
]


def _rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by claim id (the claim's own rows, bold or not)."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| claim"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0].strip("*"), []).append(cells)
    return rows


def test_a_flat_list_with_nulls_renders_every_claim(tmp_path):
    path = tmp_path / "findings.json"
    path.write_text(json.dumps(FLAT))
    markdown = findings_markdown(path)
    rows = _rows(markdown)
    assert sorted(rows) == ["C1", "C2", "C3", "C4", "C5"]
    assert rows["C1"][0][2:] == ["+0.120 [+0.020, +0.210]", "reproduced"]
    assert rows["C2"][-1][3] == "**opposite**"
    assert rows["C3"][0][2] == "+0.010 [–, +0.040]"  # a null bound shows as a dash
    assert rows["C4"][0][1:] == ["–", "–", "not tested"]  # nothing measured: not tested
    assert rows["C5"][0][3] == "not tested"
    assert "- **C4** the curriculum wins" in markdown  # the claim text is listed


def test_findings_document_round_trips_with_its_context(tmp_path):
    effects = (Effect("avg_at_4: opd − dagger", "avg_at_4", "higher", 0.2, 0.1, 0.3,
                      "reproduced"),
               Effect("pass_at_4: opd − dagger", "pass_at_4", None, 0.05, -0.1, 0.2, None))
    findings = [Finding("C1", "reverse KL wins", effects, "reproduced"),
                Finding("C5", "GRPO", (), None, "not tested: needs rl_cells")]
    document = findings_document(findings, date="2026-12-01", machine="x86_64, 2 CPUs, Linux",
                                 study="study", wall_seconds=3000)
    path = tmp_path / "findings.json"
    path.write_text(json.dumps(document))
    markdown = findings_markdown(path)
    assert markdown.startswith("Measured 2026-12-01 on x86_64, 2 CPUs, Linux; study `study`, "
                               "wall time 50 min.")
    rows = _rows(markdown)
    assert rows["C1"][1][2:] == ["+0.050 [-0.100, +0.200]", "–"]  # reported, not judged
    assert rows["C5"][0][3] == "not tested: needs rl_cells"


def test_without_findings_json_the_block_says_not_measured(tmp_path):
    assert findings_markdown(tmp_path / "findings.json") == NOT_MEASURED


def test_the_summary_has_one_row_per_claim_naming_what_was_not_inconclusive(tmp_path):
    effects = (Effect("avg_at_4: opd − dagger", "avg_at_4", "higher", 0.2, 0.1, 0.3,
                      "reproduced"),
               Effect("entropy: opd − dagger", "entropy", "lower", 0.05, 0.01, 0.09,
                      "opposite"),
               Effect("length: opd − dagger", "length", "lower", -1.0, -3.0, 1.0,
                      "inconclusive"),
               Effect("pass_at_4: opd − dagger", "pass_at_4", None, 0.05, -0.1, 0.2, None))
    path = tmp_path / "findings.json"
    path.write_text(json.dumps(findings_document(
        [Finding("C1", "reverse KL wins", effects, "opposite"),
         Finding("C5", "GRPO", (), None, "not tested: needs rl_cells")], study="s")))
    rows = _rows(findings_markdown(path, summary=True))
    assert rows["C1** reverse KL wins"] == [[
        "**C1** reverse KL wins", "**opposite**",
        "1 reproduced (avg_at_4: opd − dagger +0.200 [+0.100, +0.300]), "
        "1 opposite (entropy: opd − dagger +0.050 [+0.010, +0.090]), 1 inconclusive"]]
    assert rows["C5** GRPO"][0][1:] == ["**not judged**", "not tested: needs rl_cells"]
    assert "pass_at_4" not in findings_markdown(path, summary=True)  # reported, not judged


def test_the_cli_rewrites_only_the_blocks_and_is_idempotent(tmp_path, capsys):
    readme, study = tmp_path / "README.md", tmp_path / "study.md"
    path = tmp_path / "findings.json"
    for page in (readme, study):
        page.write_text(f"# x\n\n{README_START}\nold\n{README_END}\n\nafter\n")
    path.write_text(json.dumps(FLAT))
    assert main(["findings", str(path), "--readme", str(readme), "--study", str(study)]) == 0
    for page, summary in ((readme, True), (study, False)):
        text = page.read_text()
        assert text.startswith("# x\n\n") and text.endswith(f"{README_END}\n\nafter\n")
        assert findings_markdown(path, summary=summary) in text and "old" not in text
        assert not update_readme(path, page, summary=summary)  # already up to date
    assert capsys.readouterr().out.count("rewritten") == 2


@pytest.mark.parametrize("text", ["no markers\n",
                                  f"{README_START}\n{README_START}\n{README_END}\n"])
def test_a_readme_without_one_pair_of_markers_is_refused(tmp_path, capsys, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert main(["findings", str(tmp_path / "findings.json"), "--readme", str(readme)]) == 2
    assert "README.md: needs exactly one" in capsys.readouterr().err
    assert readme.read_text() == text


def test_a_claim_without_id_is_refused(tmp_path):
    path = tmp_path / "findings.json"
    path.write_text(json.dumps([{"claim": "x"}]))
    with pytest.raises(ValueError, match="claim 0 has no 'id'"):
        findings_markdown(path)


def test_a_full_disk_leaves_the_readme_byte_for_byte_and_names_it(tmp_path, capsys, small_disk):
    disk = small_disk.mount("64k")
    readme = (disk / "README.md").resolve()
    # Five whole pages: the new block needs a sixth, so a rewrite in place would free five,
    # fill them and stop mid-sentence (as it did at 16,384 bytes on a full disk).
    block = f"{README_START}\nold\n{README_END}\n\nafter\n"
    prose = f"# x\n\n{'A sentence of the README. ' * 1000}"[: 5 * 4096 - len(block) - 1]
    readme.write_text(f"{prose}\n{block}")
    before = readme.read_bytes()
    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps(FLAT))
    small_disk.fill(disk)
    assert main(["findings", str(findings), "--readme", str(readme)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"distill findings: No space left on device writing README.md ({readme}): free space, "
        "then rerun; the old file is unchanged")
    assert readme.read_bytes() == before
    assert sorted(p.name for p in disk.iterdir()) == [".filler", "README.md"]  # no temporary
    small_disk.empty(disk)
    assert main(["findings", str(findings), "--readme", str(readme)]) == 0
    assert findings_markdown(findings, summary=True) in readme.read_text()
