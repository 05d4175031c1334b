"""The HTML report: one self-contained file (inline CSS and script, nothing fetched), for `check
--html` (every scenario) and `diff --html` (one subject against its reference).

    summary          one row per scenario, one cell per judgment, each linked to its section;
                     then every failing difference or deviation, each a link to where it is
    filters          thread, call (ioctl), failing only: they hide what does not match
    per scenario     differences or deviations grouped by cause (a group expands), the memory
                     layout in words, lint findings, and per thread the two sequences side by
                     side with the differing fields marked

Every input-derived string is made printable (model.printable.shown) and HTML-escaped. The page
reads without its script; the script only adds the filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conformance.compare.conformance import ConformanceResult
from conformance.compare.regression import Comparison
from conformance.lint.engine import Finding
from conformance.model.document import TraceDocument
from conformance.report.deviations import exit_lines
from conformance.report.host import DIFF_HOSTS, host_lines
from conformance.report.html_tables import (
    Anchors,
    FailingItem,
    conformance_causes,
    conformance_table,
    e,
    regression_causes,
    regression_table,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #1f2328; }
h1 { font-size: 1.35em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin-top: 1.2em; } h4 { font-size: 0.95em; margin: 1em 0 0.3em; }
.fail, .failing { color: #b3001b; } .pass { color: #176f2c; } .note { color: #57606a; }
table.summary { border-collapse: collapse; margin: 0.5em 0 1em; }
table.summary td, table.summary th { border: 1px solid #d0d7de; padding: 3px 8px;
  text-align: left; }
table.calls { border-collapse: collapse; width: 100%; font-family: ui-monospace, monospace;
  font-size: 0.82em; }
table.calls td { border-top: 1px solid #eee; padding: 2px 6px; vertical-align: top; width: 48%;
  word-break: break-word; }
table.calls td.mark { width: 2%; text-align: center; }
tr.differs td { background: #fff8c5; } tr.extra td, tr.missing td { background: #ffebe9; }
tr.elsewhere td { background: #ddf4ff; } tr.skipped td, tr.same td { color: #57606a; }
tr[data-failing="0"].extra td { background: #f6f8fa; }
mark.fail { background: #ffcecb; color: #82071e; font-weight: 600; }
mark.allowed { background: #eaeef2; color: #24292f; }
div.field { padding-left: 1.5em; }
li.cause { margin: 2px 0; font-family: ui-monospace, monospace; font-size: 0.85em; }
li.cause.failing { font-weight: 600; } li.cause.allowed { color: #57606a; }
span.reason { font-weight: normal; color: #57606a; }
ul.members { font-weight: normal; }
#filters { position: sticky; top: 0; background: #f6f8fa; padding: 6px 10px;
  border: 1px solid #d0d7de; margin: 1em 0; z-index: 1; }
#filters label { margin-right: 1.2em; }
[hidden] { display: none !important; }
"""

# Hides every element carrying data-thread / data-call / data-failing that the chosen filters
# exclude, and a scenario or thread section left with nothing to show.
_SCRIPT = """
(function () {
  const thread = document.getElementById("filter-thread");
  const call = document.getElementById("filter-call");
  const failing = document.getElementById("filter-failing");
  function apply() {
    document.querySelectorAll("[data-failing]").forEach(function (element) {
      const threadOk = !thread.value || element.dataset.thread === thread.value;
      const callOk = !call.value || element.dataset.call === call.value;
      const failOk = !failing.checked || element.dataset.failing === "1";
      element.hidden = !(threadOk && callOk && failOk);
    });
    document.querySelectorAll("div.thread").forEach(function (section) {
      section.hidden = (thread.value && section.dataset.thread !== thread.value) ||
        !section.querySelector("[data-failing]:not([hidden])");
    });
    document.querySelectorAll("section.scenario").forEach(function (section) {
      section.hidden = failing.checked && section.dataset.failed !== "1";
    });
  }
  [thread, call, failing].forEach(function (control) {
    control.addEventListener("change", apply);
  });
  apply();
})();
"""


@dataclass(frozen=True, slots=True)
class Judgment:
    """One of a scenario's verdicts, as the terminal line says it: `snapshot: equal`."""

    name: str  # "snapshot", "qemu tiny-bios", "lint"
    verdict: str
    failed: bool
    kind: str = ""  # the summary's column when not the name ("qemu" for "qemu tiny-bios")

    @property
    def column(self) -> str:
        return self.kind or self.name

    @property
    def cell(self) -> str:
        """The summary cell: the verdict, after what the name says beyond the column."""
        extra = self.name.removeprefix(self.column).strip()
        return f"{extra}: {self.verdict}" if extra else self.verdict


@dataclass(frozen=True, slots=True)
class ScenarioSection:
    name: str
    verdict: str  # "pass", "FAIL", "created", ...
    failed: bool
    judgments: tuple[Judgment, ...]
    comparison: Comparison | None = None  # shown when it differs
    conformance: ConformanceResult | None = None
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default=())  # said under the heading


def conformance_page(result: ConformanceResult, name: str) -> str:
    """`diff --html`: one subject against its reference."""
    where = str(result.reference.path or "the reference")
    failures = len(result.failures)
    verdict = "ok" if result.ok else f"FAIL, {failures} deviation{'s' * (failures != 1)}"
    judgment = Judgment(f"reference {where}", verdict, not result.ok, kind="reference")
    section = ScenarioSection(
        name,
        "pass" if result.ok else "FAIL",
        not result.ok,
        (judgment,),
        conformance=result,
        notes=tuple(host_lines(result.hosts, *DIFF_HOSTS)),
    )
    return gate_page([section], f"{name} against {where}")


def gate_page(sections: Sequence[ScenarioSection], title: str) -> str:
    """`check --html`: every scenario, summary first."""
    bodies = [_scenario(section, Anchors(f"s{number}")) for number, section in enumerate(sections)]
    failing = [
        (section.name, anchors.failing)
        for section, (_, anchors) in zip(sections, bodies, strict=True)
    ]
    failed = sum(section.failed for section in sections)
    headline = f"{len(sections)} scenario{'s' * (len(sections) != 1)}: " + (
        f'<span class="fail">{failed} failed</span>'
        if failed
        else '<span class="pass">all pass</span>'
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}: kvm-conformance</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<section id="summary"><p>{headline}</p>',
        _summary_table(sections),
        _failing_list(failing),
        "</section>",
        _filters(sections),
        *(html for html, _ in bodies),
        f"<script>{_SCRIPT}</script></body></html>\n",
    ]
    return "\n".join(parts)


def _summary_table(sections: Sequence[ScenarioSection]) -> str:
    columns = list(dict.fromkeys(j.column for section in sections for j in section.judgments))
    head = "".join(f"<th>{e(column)}</th>" for column in columns)
    rows = []
    for number, section in enumerate(sections):
        cells = []
        for column in columns:
            judgment = next((j for j in section.judgments if j.column == column), None)
            if judgment is None:
                cells.append("<td></td>")
                continue
            css = "fail" if judgment.failed else "pass"
            link = f"#s{number}-{_slug(judgment.name)}"
            cells.append(f'<td><a class="{css}" href="{link}">{e(judgment.cell)}</a></td>')
        css = "fail" if section.failed else "pass"
        rows.append(
            f'<tr><td><a href="#s{number}">{e(section.name)}</a></td>'
            f'<td class="{css}">{e(section.verdict)}</td>{"".join(cells)}</tr>'
        )
    return (
        f'<table class="summary"><tr><th>scenario</th><th>verdict</th>{head}</tr>'
        f"{''.join(rows)}</table>"
    )


def _failing_list(failing: list[tuple[str, list[FailingItem]]]) -> str:
    """Every failing item, scenario by scenario, each a link to where the page shows it."""
    count = sum(len(items) for _, items in failing)
    if not count:
        return '<p class="pass">Nothing fails.</p>'
    parts = [f"<h3>Failing ({count})</h3>", '<ul id="failing">']
    for name, items in failing:
        if not items:
            continue
        links = "".join(
            f'<li {item.attributes()}><a href="#{item.anchor}">{e(item.text)}</a></li>'
            for item in items
        )
        parts.append(f"<li>{e(name)}<ul>{links}</ul></li>")
    parts.append("</ul>")
    return "".join(parts)


def _filters(sections: Sequence[ScenarioSection]) -> str:
    threads: set[str] = set()
    calls: set[str] = set()
    for section in sections:
        for document in _documents(section):
            for located in document.calls():
                threads.add(located.thread)
                calls.add(located.call.name)
    thread_options = "".join(f'<option value="{e(t)}">{e(t)}</option>' for t in sorted(threads))
    call_options = "".join(f'<option value="{e(c)}">{e(c)}</option>' for c in sorted(calls))
    return (
        '<form id="filters" onsubmit="return false">'
        '<label>thread <select id="filter-thread"><option value="">all</option>'
        f"{thread_options}</select></label>"
        '<label>call <select id="filter-call"><option value="">all</option>'
        f"{call_options}</select></label>"
        '<label><input type="checkbox" id="filter-failing"> failing only</label></form>'
    )


def _documents(section: ScenarioSection) -> list[TraceDocument]:
    found: list[TraceDocument] = []
    if section.comparison is not None and not section.comparison.ok:
        found += [section.comparison.expected, section.comparison.actual]
    if section.conformance is not None:
        found.append(section.conformance.subject)
    return found


def _scenario(section: ScenarioSection, anchors: Anchors) -> tuple[str, Anchors]:
    css = "fail" if section.failed else "pass"
    parts = [
        f'<section class="scenario" id="{anchors.prefix}" data-failed="{int(section.failed)}">',
        f'<h2>{e(section.name)}: <span class="{css}">{e(section.verdict)}</span></h2>',
    ]
    parts.extend(f'<p class="note">{e(note)}</p>' for note in section.notes)
    for judgment in section.judgments:
        said = "fail" if judgment.failed else "pass"
        parts.append(
            f'<h3 id="{anchors.prefix}-{_slug(judgment.name)}">{e(judgment.name)}: '
            f'<span class="{said}">{e(judgment.verdict)}</span></h3>'
        )
        if judgment.name == "snapshot" and section.comparison is not None:
            parts.extend(_regression(section.comparison, anchors))
        elif judgment.name == "lint":
            parts.extend(_findings(section.findings, anchors))
        elif section.conformance is not None:
            parts.extend(_conformance(section.conformance, anchors, judgment.failed))
    parts.append("</section>")
    return "\n".join(parts), anchors


def _regression(comparison: Comparison, anchors: Anchors) -> list[str]:
    if comparison.ok:
        return []
    where = comparison.expected.path
    parts = [f'<p class="note">expected: {e(str(where))}</p>'] if where is not None else []
    parts.append(f'<ul class="causes">{"".join(regression_causes(comparison, anchors))}</ul>')
    threads = sorted({d.thread for d in comparison.differences})
    parts.extend(regression_table(comparison, thread) for thread in threads)
    return parts


def _conformance(result: ConformanceResult, anchors: Anchors, judged: bool) -> list[str]:
    parts = [f'<p class="note">reference: {e(str(result.reference.path))}</p>']
    if result.layout:
        sentences = "".join(f"<li>{e(sentence)}</li>" for sentence in result.layout)
        parts.append(f"<h4>memory layout</h4><ul>{sentences}</ul>")
    exits = exit_lines(result)
    if exits:
        lines = "<br>".join(e(line) for line in exits)
        parts.append(f'<h4>KVM_RUN exits</h4><p class="note">{lines}</p>')
    items = conformance_causes(result, anchors, judged=judged)
    parts.append(f'<ul class="causes">{"".join(items) or "<li>no deviation</li>"}</ul>')
    parts.extend(conformance_table(result, thread, judged=judged) for thread in result.rows)
    return parts


def _findings(findings: Sequence[Finding], anchors: Anchors) -> list[str]:
    if not findings:
        return []
    items = []
    for finding in findings:
        anchor = anchors.new()
        text = f"{finding.where}: {finding.severity.value} {finding.rule_id}: {finding.message}"
        failing = finding.severity.value == "error"
        if failing:
            anchors.failing.append(FailingItem(anchor, text, finding.thread, finding.request))
        items.append(
            f'<li id="{anchor}" class="cause {"failing" if failing else "allowed"}" '
            f'data-thread="{e(finding.thread)}" data-call="{e(finding.request)}" '
            f'data-failing="{int(failing)}">{e(text)}</li>'
        )
    return [f'<ul class="causes">{"".join(items)}</ul>']


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
