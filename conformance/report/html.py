"""A conformance result as one self-contained HTML page: inline CSS, no scripts, every value
escaped. Deviations first, then each subject thread beside the reference calls it was aligned
with; runs of reference calls the subject skips fold into <details> (no JavaScript needed)."""

from __future__ import annotations

import html

from conformance.compare.conformance import ConformanceResult, Row, RowStatus
from conformance.model.flow_yaml import format_call
from conformance.report.deviations import describe_deviation, reference_name
from conformance.report.values import ROW_MARKS

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 2em; }
.ok { color: #176f2c; } .fail { color: #b00020; }
table { border-collapse: collapse; width: 100%; font-family: monospace; font-size: 0.85em; }
td { border-top: 1px solid #ddd; padding: 2px 6px; vertical-align: top; white-space: pre-wrap;
     word-break: break-all; width: 48%; }
td.mark { width: 2%; text-align: center; }
tr.differs td { background: #fff3cd; } tr.extra td { background: #f8d7da; }
tr.elsewhere td { background: #e8f0fe; } tr.skipped td { color: #777; }
li.allowed { color: #555; } li.failure { color: #b00020; font-weight: bold; }
"""


def render_html(result: ConformanceResult, name: str) -> str:
    reference = str(result.reference.path or "the QEMU reference")
    verdict = (
        '<span class="ok">conforms</span>'
        if result.ok
        else f'<span class="fail">{len(result.failures)} deviation(s) not allowed</span>'
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(name)}: conformance</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(name)} against {_e(reference)}: {verdict}</h1>",
    ]
    if result.layout:
        parts.append("<h2>Memory layout</h2><ul>")
        parts.extend(f"<li>{_e(sentence)}</li>" for sentence in result.layout)
        parts.append("</ul>")
    parts.append("<h2>Deviations</h2><ul>")
    for deviation in sorted(result.deviations, key=lambda d: d.allowed):
        css = "allowed" if deviation.allowed else "failure"
        parts.append(
            f'<li class="{css}">{_e(describe_deviation(deviation, reference_name(result)))}</li>'
        )
    if not result.deviations:
        parts.append("<li>none</li>")
    parts.append("</ul>")
    for thread, rows in result.rows.items():
        parts.append(f"<h2>Thread {_e(thread)}: subject | QEMU</h2>")
        parts.extend(_table(result, thread, rows))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table(result: ConformanceResult, thread: str, rows: list[Row]) -> list[str]:
    out = ["<table>"]
    skipped: list[str] = []

    def flush() -> None:
        if not skipped:
            return
        if len(skipped) > 1:
            out.append(
                f'<tr class="skipped"><td colspan="3"><details><summary>{len(skipped)} QEMU '
                "calls the subject does not make</summary><table>"
            )
            out.extend(skipped)
            out.append("</table></details></td></tr>")
        else:
            out.extend(skipped)
        skipped.clear()

    for row in rows:
        line = _row(result, thread, row)
        if row.status is RowStatus.SKIPPED:
            skipped.append(line)
        else:
            flush()
            out.append(line)
    flush()
    out.append("</table>")
    return out


def _row(result: ConformanceResult, thread: str, row: Row) -> str:
    left = right = ""
    if row.subject_index is not None:
        left = f"#{row.subject_index} " + format_call(
            result.subject.threads[thread][row.subject_index].entry
        )
    if row.reference_thread is not None and row.reference_index is not None:
        entry = result.reference.threads[row.reference_thread][row.reference_index].entry
        where = "" if row.reference_thread == thread else f"[{row.reference_thread}] "
        right = f"{where}#{row.reference_index} {format_call(entry)}"
    return (
        f'<tr class="{row.status.value}"><td>{_e(left)}</td>'
        f'<td class="mark">{ROW_MARKS[row.status]}</td><td>{_e(right)}</td></tr>'
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)
