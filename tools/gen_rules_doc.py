"""Write docs/rules.md from the rule table in conformance/rules.

python tools/gen_rules_doc.py
"""

from __future__ import annotations

from pathlib import Path

from conformance.lint.rules_doc import render_rules_markdown

RULES_DOC = Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def main() -> None:
    RULES_DOC.write_text(render_rules_markdown(), encoding="utf-8")


if __name__ == "__main__":
    main()
