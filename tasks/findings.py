"""The study's findings: each of the method's claims (C0–C5) measured with an interval and a
verdict computed from it — never typed by hand.

Every effect is a paired contrast (``tasks.stats.contrast``) of per-problem values over the
same evaluation problems and sample seeds, with the training seeds as a second bootstrap level;
``verdict`` reads its 95 % interval against the side the claim predicts, and a claim that needs
several effects is ``reproduced`` only if all are (``claim_verdict``). A claim whose runs the
study did not make is reported as not tested (verdict ``None``), never guessed.

The claims (arXiv 2605.16826), as tested here at the study's horizon ``steps`` unless said:

- C0 distillation teaches (the premise every other claim stands on): each cell of the 2×2 grid
  raises Avg@k above the starting student. Greedy accuracy is reported beside it, and the note
  says how much of the teacher − student gap the best cell closes. Were it not reproduced, the
  comparisons below would measure which way of distilling hurts least.
- C1 KL direction: with the same prefix source, reverse KL gives higher Avg@k, lower token
  entropy and shorter responses than forward KL (offline_rl vs sft on teacher prefixes, opd vs
  dagger on student prefixes; Pass@k is reported, not judged: the paper finds its advantage
  smaller and able to flip).
- C2 prefix source: with the same KL direction, student prefixes beat teacher prefixes on
  Avg@k and Pass@k (the mean of dagger − sft and opd − offline_rl).
- C3 horizon: long training with reverse KL lowers entropy and lengthens responses (opd at
  long_steps vs at steps), and a forward-heavy mix (student:0.25) keeps entropy higher and
  responses shorter than opd at long_steps while keeping at least 75 % of its Avg@k.
- C4 curriculum: the entropy-gated length curriculum beats a fixed cap equal to its top rung on
  Avg@k and Pass@k with shorter responses.
- C5 RL after distillation: a forward-KL student gains more Avg@k under GRPO than the
  reverse-KL student of the same prefix source (after − before, difference of differences).

Wherever an effect on Avg@k is measured, the same contrast on greedy accuracy is reported beside
it without a verdict (like Pass@k in C1): a cell that learnt raises both, one that only sharpened
its distribution can raise Avg@k at temperature 1 while its greedy accuracy stays or falls. Runs
evaluated before greedy responses were stored simply lack that effect.

The committed findings (``docs/findings.json``) become the README's findings block (one row per
claim) and docs/study.md's (every effect) through ``findings_markdown`` / ``update_readme``
(``distill findings docs/findings.json --readme README.md --study docs/study.md``); without the
file each block says they are not measured yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from distill_core import PRESETS, Objective
from tasks.configs import REFERENCES, StudyConfig
from tasks.eval_metrics import (
    AVG_AT_K,
    ENTROPY,
    GREEDY_ACCURACY,
    PASS_AT_K,
    RESPONSE_LENGTH,
    EvalMetric,
)
from tasks.files import atomic_write_text
from tasks.plan import cells
from tasks.stats import (
    Direction,
    Interval,
    ProblemValues,
    Verdict,
    claim_verdict,
    contrast,
    problem_values,
    verdict,
)
from tasks.study import Study, samples_by_seed

REVERSE_OF = {"sft": "offline_rl", "dagger": "opd"}  # the same prefix source, the other direction
RETAINED_SHARE = 0.75  # C3: "keeps most of the accuracy" means at least this share of opd's


@dataclass(frozen=True)
class Effect:
    """One measured effect: a contrast of cells on a metric, its interval and verdict (None for
    an effect reported but not judged)."""

    name: str
    metric: str
    predicted: Direction | None
    estimate: float | None  # None only when read back from a findings.json with a null
    low: float | None
    high: float | None
    verdict: Verdict | None


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    effects: tuple[Effect, ...]
    verdict: Verdict | None  # None: not tested — see note
    note: str = ""

    def to_dict(self) -> dict:
        return {**asdict(self), "effects": [asdict(e) for e in self.effects]}


class _Cells:
    """Per-problem values of the study's cells, looked up by objective and variant."""

    def __init__(self, study: Study, config: StudyConfig):
        self.study, self.config, self.k = study, config, max(config.eval_ks)
        self.runs = {label: runs for label, runs in study.cells().items()}

    def label(self, objective: str, **variant) -> str | None:
        parsed = Objective.parse(objective)
        wanted = [c for c in cells(self.config) if c.objective == parsed
                  and c.curriculum == variant.get("curriculum", False)
                  and c.max_new_tokens == variant.get("max_new_tokens")]
        return wanted[0].label if wanted and wanted[0].label in self.runs else None

    def values(self, label: str, metric: EvalMetric, step: int | None = None
               ) -> ProblemValues:
        """A cell's per-problem values at a training step (None: its last evaluation); greedy
        accuracy from the greedy responses."""
        by_seed = samples_by_seed(self.runs[label], step=step, greedy=metric.greedy)
        if not by_seed:
            raise LookupError(f"{label!r} has no evaluation {_rows(metric)} at step {step}")
        return problem_values(by_seed, metric.name, self.k)

    def rl_values(self, source_label: str, metric: EvalMetric) -> ProblemValues:
        """The GRPO runs started from source_label's runs, at their last evaluation."""
        runs = self.runs.get(f"grpo {source_label}", ())
        by_seed = samples_by_seed(runs, greedy=metric.greedy)
        if not by_seed:
            raise LookupError(f"no GRPO run from {source_label!r} with evaluation "
                              f"{_rows(metric)}")
        return problem_values(by_seed, metric.name, self.k)


def _rows(metric: EvalMetric) -> str:
    return "greedy responses" if metric.greedy else "samples"


def _effect(name: str, metric: str, predicted: Direction | None,
            terms: Sequence[tuple[float, ProblemValues]]) -> Effect:
    measured: Interval = contrast(terms)
    judged = verdict(measured, predicted) if predicted else None
    return Effect(name, metric, predicted, measured.estimate, measured.low, measured.high,
                  judged)


def _greedy_effect(name: str, terms: Sequence[tuple[float, Callable[[], ProblemValues]]]
                   ) -> list[Effect]:
    """The greedy-accuracy contrast beside an Avg@k effect, reported without a verdict: terms
    are (coefficient, a call giving a cell's greedy values). Nothing when a cell has no greedy
    responses (runs evaluated before they were stored)."""
    try:
        measured = [(coefficient, values()) for coefficient, values in terms]
    except LookupError:
        return []
    greedy = GREEDY_ACCURACY.name
    return [_effect(f"{greedy}: {name}", greedy, None, measured)]


def _finding(id_: str, claim: str, effects: list[Effect], note: str = "") -> Finding:
    judged = [e.verdict for e in effects if e.verdict is not None]
    return Finding(id_, claim, tuple(effects), claim_verdict(judged) if judged else None, note)


def _untested(id_: str, claim: str, why: str) -> Finding:
    return Finding(id_, claim, (), None, f"not tested: {why}")


# ----------------------------------------------------------------------------- the claims

C0 = "Distillation teaches: every cell of the 2×2 grid raises Avg@k above the starting student"
C1 = "Same prefix source: reverse KL gives higher Avg@k, lower entropy, shorter responses"
C2 = "Same KL direction: student prefixes beat teacher prefixes on Avg@k and Pass@k"
C3 = ("Long training with reverse KL lowers entropy and lengthens responses; λ = 0.25 keeps "
      "them stable and most of the accuracy")
C4 = "The entropy-gated curriculum beats a fixed cap at its top rung, with shorter responses"
C5 = "Forward-KL students gain more from GRPO than reverse-KL students"


GRID = tuple(PRESETS)  # the 2×2 grid's four cells: sft, dagger, offline_rl, opd
TEACHER, START = REFERENCES


def _c0(c: _Cells) -> Finding:
    k, step = c.k, c.config.steps
    grid = [(cell, label) for cell in GRID if (label := c.label(cell))]
    if START not in c.runs or not grid:
        return _untested("C0", C0, "needs the starting student evaluated and a cell of the grid")
    start, effects, gains, avg = c.values(START, AVG_AT_K), [], {}, AVG_AT_K.key(k)
    for cell, label in grid:
        trained = c.values(label, AVG_AT_K, step)
        effects.append(_effect(f"{avg}: {cell} − {START}", avg, "higher",
                               [(1, trained), (-1, start)]))
        gains[cell] = effects[-1].estimate
        effects += _greedy_effect(f"{cell} − {START}",
                                  [(1, partial(c.values, label, GREEDY_ACCURACY, step)),
                                   (-1, partial(c.values, START, GREEDY_ACCURACY))])
    return _finding("C0", C0, effects, _gap_note(c, start, gains))


def _gap_note(c: _Cells, start: ProblemValues, gains: dict[str, float]) -> str:
    """How much of the teacher − starting student gap in Avg@k the best cell closes."""
    best = max(gains, key=gains.get)
    if TEACHER not in c.runs:
        return f"best cell: {best}"
    gap = c.values(TEACHER, AVG_AT_K).estimate - start.estimate
    closed = f"{gains[best] / gap:.0%} of" if gap > 0 else "none of (no gap)"
    return (f"the best cell, {best}, closes {closed} the teacher − student gap in "
            f"avg@{c.k} ({start.estimate:.3f} → teacher {start.estimate + gap:.3f})")


def _c1(c: _Cells) -> Finding:
    k, step, effects = c.k, c.config.steps, []
    for forward, reverse in REVERSE_OF.items():
        f, r = c.label(forward), c.label(reverse)
        if f is None or r is None:
            continue
        name = f"{reverse} − {forward}"
        for metric, direction in ((AVG_AT_K, "higher"), (ENTROPY, "lower"),
                                  (RESPONSE_LENGTH, "lower"), (PASS_AT_K, None)):
            effects.append(_effect(f"{metric.key(k)}: {name}", metric.key(k), direction,
                                   [(1, c.values(r, metric, step)),
                                    (-1, c.values(f, metric, step))]))
        effects += _greedy_effect(name, [(1, partial(c.values, r, GREEDY_ACCURACY, step)),
                                         (-1, partial(c.values, f, GREEDY_ACCURACY, step))])
    if not effects:
        return _untested("C1", C1, "needs sft and offline_rl, or dagger and opd")
    return _finding("C1", C1, effects, "Pass@k and greedy accuracy are reported without a "
                    "verdict (the paper: Pass@k's advantage is smaller and can flip; greedy "
                    "accuracy tells learning from sharpening)")


def _c2(c: _Cells) -> Finding:
    k, step = c.k, c.config.steps
    pairs = [(c.label(t), c.label(s)) for t, s in (("sft", "dagger"), ("offline_rl", "opd"))]
    pairs = [(t, s) for t, s in pairs if t and s]
    if not pairs:
        return _untested("C2", C2, "needs sft and dagger, or offline_rl and opd")
    share = 1 / len(pairs)
    name = (f"student − teacher prefixes (mean over {len(pairs)} KL "
            f"direction{'s' * (len(pairs) > 1)})")
    effects = []
    for metric in (AVG_AT_K, PASS_AT_K):
        terms = [(sign * share, c.values(label, metric, step)) for t, s in pairs
                 for sign, label in ((1, s), (-1, t))]
        effects.append(_effect(f"{metric.key(k)}: {name}", metric.key(k), "higher", terms))
    effects += _greedy_effect(name, [(sign * share, partial(c.values, label, GREEDY_ACCURACY, step))
                                     for t, s in pairs for sign, label in ((1, s), (-1, t))])
    return _finding("C2", C2, effects)


def _c3(c: _Cells) -> Finding:
    config = c.config
    opd, mix = c.label("opd"), c.label("student:0.25")
    if not (config.long_steps and opd and mix and "opd" in config.long_cells
            and "student:0.25" in config.long_cells):
        return _untested("C3", C3, "needs opd and student:0.25 in long_cells with long_steps")
    short, long, k = config.steps, config.long_steps, c.k
    entropy, length, avg = ENTROPY.name, RESPONSE_LENGTH.name, AVG_AT_K.key(k)
    effects = [
        _effect(f"{entropy}: opd at long − short horizon", entropy, "lower",
                [(1, c.values(opd, ENTROPY, long)), (-1, c.values(opd, ENTROPY, short))]),
        _effect(f"{length}: opd at long − short horizon", length,
                "higher", [(1, c.values(opd, RESPONSE_LENGTH, long)),
                           (-1, c.values(opd, RESPONSE_LENGTH, short))]),
        _effect(f"{entropy}: student:0.25 − opd at long horizon", entropy, "higher",
                [(1, c.values(mix, ENTROPY, long)), (-1, c.values(opd, ENTROPY, long))]),
        _effect(f"{length}: student:0.25 − opd at long horizon", length, "lower",
                [(1, c.values(mix, RESPONSE_LENGTH, long)),
                 (-1, c.values(opd, RESPONSE_LENGTH, long))]),
        _effect(f"{avg}: student:0.25 − {RETAINED_SHARE} × opd at long horizon",
                avg, "higher",
                [(1, c.values(mix, AVG_AT_K, long)),
                 (-RETAINED_SHARE, c.values(opd, AVG_AT_K, long))]),
        *_greedy_effect("student:0.25 − opd at long horizon",
                        [(1, partial(c.values, mix, GREEDY_ACCURACY, long)),
                         (-1, partial(c.values, opd, GREEDY_ACCURACY, long))]),
    ]
    return _finding("C3", C3, effects, f"short horizon = {short} steps, long = {long}")


def _c4(c: _Cells) -> Finding:
    config = c.config
    if not (config.compare_curriculum and config.curriculum):
        return _untested("C4", C4, "needs compare_curriculum with a curriculum")
    top, k = max(config.curriculum), c.k
    effects = []
    for objective in config.curriculum_cells or config.objectives():
        gated, fixed = (c.label(objective, curriculum=True),
                        c.label(objective, max_new_tokens=top))
        if not (gated and fixed):
            continue
        for metric, direction in ((AVG_AT_K, "higher"), (PASS_AT_K, "higher"),
                                  (RESPONSE_LENGTH, "lower")):
            effects.append(_effect(f"{metric.key(k)}: {gated} − {fixed}", metric.key(k),
                                   direction, [(1, c.values(gated, metric, config.steps)),
                                               (-1, c.values(fixed, metric, config.steps))]))
        effects += _greedy_effect(f"{gated} − {fixed}",
                                  [(1, partial(c.values, gated, GREEDY_ACCURACY, config.steps)),
                                   (-1, partial(c.values, fixed, GREEDY_ACCURACY, config.steps))])
    if not effects:
        return _untested("C4", C4, "the curriculum and fixed-cap runs are missing")
    return _finding("C4", C4, effects, f"fixed cap = top rung = {top} tokens")


def _c5(c: _Cells) -> Finding:
    config, k = c.config, c.k
    effects = []
    for forward, reverse in REVERSE_OF.items():
        if forward not in config.rl_cells or reverse not in config.rl_cells:
            continue
        f, r = c.label(forward), c.label(reverse)
        try:
            terms = [(1, c.rl_values(f, AVG_AT_K)), (-1, c.values(f, AVG_AT_K)),
                     (-1, c.rl_values(r, AVG_AT_K)), (1, c.values(r, AVG_AT_K))]
        except LookupError as missing:
            return _untested("C5", C5, str(missing))
        name = f"GRPO gain of {forward} − GRPO gain of {reverse}"
        effects.append(_effect(f"{AVG_AT_K.key(k)}: {name}", AVG_AT_K.key(k), "higher",
                               terms))
        effects += _greedy_effect(name, [(1, partial(c.rl_values, f, GREEDY_ACCURACY)),
                                         (-1, partial(c.values, f, GREEDY_ACCURACY)),
                                         (-1, partial(c.rl_values, r, GREEDY_ACCURACY)),
                                         (1, partial(c.values, r, GREEDY_ACCURACY))])
    if not effects:
        return _untested("C5", C5, "needs rl_cells with a forward and a reverse student of one "
                         "prefix source (dagger and opd, or sft and offline_rl)")
    return _finding("C5", C5, effects, "gain = after GRPO − before, on the same problems")


def study_findings(study: Study, config: StudyConfig) -> list[Finding]:
    """C0–C5 measured on a finished study (see the module docstring)."""
    table = _Cells(study, config)
    return [claim(table) for claim in (_c0, _c1, _c2, _c3, _c4, _c5)]


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def findings_table(findings: Sequence[Finding]) -> str:
    """Markdown: one row per claim (verdict), then its effects with their intervals; a number
    or verdict that is missing (None) shows as "–"."""
    lines = ["| claim | effect | estimate [95 % interval] | verdict |", "|---|---|---|---|"]
    for finding in findings:
        if not finding.effects:
            lines.append(f"| {finding.id} | – | – | {finding.note or 'not tested'} |")
        for effect in finding.effects:
            interval = ("" if effect.low is None and effect.high is None
                        else f" [{_signed(effect.low)}, {_signed(effect.high)}]")
            lines.append(f"| {finding.id} | {effect.name} | {_signed(effect.estimate)}"
                         f"{interval} | {effect.verdict or '–'} |")
        if finding.effects:
            lines.append(f"| **{finding.id}** | **the claim** | | "
                         f"**{finding.verdict or 'not judged'}** |")
    judged = sum(e.verdict is not None for f in findings for e in f.effects)
    return "\n".join(lines) + (f"\n\n{judged} judged effects in "
                               f"{sum(f.verdict is not None for f in findings)} claims; each "
                               "interval is 95 %, not corrected for the number of comparisons.")


def findings_document(findings: Sequence[Finding], **context) -> dict:
    """What findings.json holds: the claims with effects, intervals and verdicts, and context
    (date, machine, wall time, study name) given by the caller."""
    return {**context, "claims": [f.to_dict() for f in findings]}



# ----------------------------------------------------------------------------- the README block

README_START, README_END = "<!-- findings:start -->", "<!-- findings:end -->"
NOT_MEASURED = ("The findings are not measured yet. A study (`distill grid` on a study config) "
                "writes findings.json; committed as `docs/findings.json`, it is rendered here "
                "by `distill findings docs/findings.json --readme README.md`.")
SUMMARY_FOOTER = ("Each interval is 95 %, not corrected for the number of comparisons; every "
                  "effect with its interval: [docs/study.md](docs/study.md#findings).")


def findings_from_json(data: dict | list) -> tuple[list[Finding], dict]:
    """(findings, context) from a findings.json: ``findings_document``'s dict (context keys and
    ``claims``) or a bare list of claims. A claim holds ``effects`` (name, metric, estimate,
    low, high, verdict) or one flat effect (``effect``: the estimate, ``interval``: [lo, hi]);
    any number, interval or verdict may be null."""
    claims, context = (data, {}) if isinstance(data, list) else (
        data.get("claims"), {k: v for k, v in data.items() if k != "claims"})
    if not isinstance(claims, list):
        raise ValueError("findings.json: expected a list of claims or an object with 'claims'")
    return [_finding_from_dict(claim, i) for i, claim in enumerate(claims)], context


def _finding_from_dict(claim: dict, index: int) -> Finding:
    if not isinstance(claim, dict) or not claim.get("id"):
        raise ValueError(f"findings.json: claim {index} has no 'id' (C0–C5): {claim!r:.80}")
    if "effects" in claim:
        effects = tuple(Effect(e.get("name") or e.get("metric") or "effect", e.get("metric", ""),
                               e.get("predicted"), e.get("estimate"), e.get("low"),
                               e.get("high"), e.get("verdict")) for e in claim["effects"] or ())
    elif claim.get("effect") is not None or claim.get("interval") is not None:
        low, high = claim.get("interval") or (None, None)
        effects = (Effect(claim.get("metric") or "effect", claim.get("metric", ""), None,
                          claim.get("effect"), low, high, claim.get("verdict")),)
    else:
        effects = ()
    return Finding(claim["id"], claim.get("claim", ""), effects, claim.get("verdict"),
                   claim.get("note") or "")


def _context_line(context: dict) -> str:
    """'Measured DATE on MACHINE; study NAME, wall time N min.' from what the context holds."""
    when = " ".join(p for p in (f"measured {context['date']}" if context.get("date") else "",
                                f"on {context['machine']}" if context.get("machine") else "")
                    if p)
    what = ", ".join(p for p in (
        f"study `{context['study']}`" if context.get("study") else "",
        f"wall time {round(context['wall_seconds'] / 60)} min"
        if isinstance(context.get("wall_seconds"), (int, float)) else "") if p)
    line = "; ".join(p for p in (when, what) if p)
    return f"{line[:1].upper()}{line[1:]}." if line else ""


def findings_summary(findings: Sequence[Finding]) -> str:
    """Markdown: one row per claim — its statement, its verdict, and how its judged effects
    came out, naming (with estimate and interval) each that was reproduced or opposite."""
    lines = ["| claim | verdict | judged effects |", "|---|---|---|"]
    for finding in findings:
        judged = [e for e in finding.effects if e.verdict is not None]
        parts = []
        for kind in ("reproduced", "opposite", "inconclusive"):
            effects = [e for e in judged if e.verdict == kind]
            named = "; ".join(f"{e.name} {_signed(e.estimate)} [{_signed(e.low)}, "
                              f"{_signed(e.high)}]" for e in effects)
            if effects:
                parts.append(f"{len(effects)} {kind}"
                             + (f" ({named})" if kind != "inconclusive" else ""))
        outcome = ", ".join(parts) if judged else finding.note or "not tested"
        lines.append(f"| **{finding.id}** {finding.claim} | **{finding.verdict or 'not judged'}**"
                     f" | {outcome} |")
    return "\n".join(lines)


def _read_findings(path: Path) -> tuple[list[Finding], dict]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from error
    return findings_from_json(data)


def findings_markdown(path: str | Path, *, summary: bool = False) -> str:
    """A findings block: the claims of ``path`` (a findings.json) with their context — every
    effect with its interval, or (``summary``, the README's) one row per claim — or a note that
    they are not measured yet when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return NOT_MEASURED
    findings, context = _read_findings(path)
    if summary:
        return "\n\n".join(p for p in (_context_line(context), findings_summary(findings),
                                        SUMMARY_FOOTER) if p)
    claims = "\n".join(f"- **{f.id}** {f.claim}" for f in findings if f.claim)
    return "\n\n".join(p for p in (_context_line(context), claims, findings_table(findings)) if p)


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    """text with what lies between the findings markers replaced by block."""
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{where}: needs exactly one {README_START} and one {README_END} line")
    head, rest = text.split(README_START)
    _, tail = rest.split(README_END)
    return f"{head}{README_START}\n{block}\n{README_END}{tail}"


def update_readme(findings_path: str | Path, readme_path: str | Path, *,
                  summary: bool = True) -> bool:
    """Rewrite a file's findings block from findings_path — the one-row-per-claim summary (the
    README's), or every effect (``summary=False``, docs/study.md's); True if the file changed."""
    readme = Path(readme_path)
    old = readme.read_text()
    new = replace_block(old, findings_markdown(findings_path, summary=summary), str(readme))
    if new != old:
        atomic_write_text(readme, new)
    return new != old
