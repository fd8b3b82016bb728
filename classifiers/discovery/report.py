"""Readable views of a proposal: a terminal table and a self-contained HTML page.

Both show only what ``proposal.yaml`` holds, whose examples are already PII-redacted.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TextIO

from hybrid_common.files import write_text_atomic

from .proposal import Proposal

__all__ = ["print_table", "write_html"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(proposal: Proposal, out: TextIO, *, limit: int | None = None) -> None:
    """One line per category, largest first: the decision, the evidence, the keywords."""
    print(
        f"{proposal.queries} queries; proposed categories cover {proposal.proposed_share:.0%} "
        f"(target {proposal.target_share:.0%}); {proposal.unassigned_share:.0%} in no cluster (edge traffic)",
        file=out,
    )
    print(f"  {'name':<26}{'status':<10}{'prop':<5}{'share':>7}{'size':>7}{'cohes':>7}{'answers':>8}{'pii':>6}  keywords", file=out)
    for category in proposal.categories[:limit]:
        flag = "yes" if category.proposed else ("-" if category.clean else "dirty")
        private = " [private]" if category.private else ""
        print(
            f"  {category.name:<26}{category.status:<10}{flag:<5}{category.share:>7.1%}{category.size:>7}"
            f"{category.cohesion:>7.2f}{_fmt(category.answer_similarity):>8}{category.pii_share:>6.0%}  "
            f"{', '.join(category.keywords)}{private}",
            file=out,
        )
    hidden = len(proposal.categories) - (limit or len(proposal.categories))
    if hidden > 0:
        print(f"  ... {hidden} more in the proposal file", file=out)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
td.num{text-align:right}.accepted{background:#eaf7ea}.rejected{color:#999}.dirty{color:#a60}
details summary{cursor:pointer}ul{margin:.2rem 0 .2rem 1rem;padding:0}
"""


def write_html(proposal: Proposal, path: str | Path) -> Path:
    """A page per proposal: the table above with every category's examples folded in."""
    rows = []
    for category in proposal.categories:
        status = category.status if category.clean or category.status != "proposed" else "dirty"
        examples = "".join(f"<li>{html.escape(e)}</li>" for e in category.examples)
        boundary = "".join(f"<li>{html.escape(e)}</li>" for e in category.boundary)
        rows.append(
            f'<tr class="{status}"><td><b>{html.escape(category.name)}</b>'
            f"{' [private]' if category.private else ''}<br><small>{html.escape(category.id)}</small></td>"
            f"<td>{category.status}{' (proposed)' if category.proposed else ''}</td>"
            f'<td class="num">{category.share:.1%}</td><td class="num">{category.size}</td>'
            f'<td class="num">{category.cohesion:.2f}</td><td class="num">{_fmt(category.answer_similarity)}</td>'
            f'<td class="num">{category.pii_share:.0%}</td><td>{html.escape(", ".join(category.keywords))}'
            f"<details><summary>examples</summary><ul>{examples}</ul>"
            f"<b>boundary</b><ul>{boundary}</ul></details></td></tr>"
        )
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Category proposal</title><style>{_STYLE}</style></head>"
        f"<body><h1>Category proposal</h1><p>{proposal.queries} logged queries, {proposal.created_at}. Proposed categories "
        f"cover {proposal.proposed_share:.0%} of traffic (target {proposal.target_share:.0%}); "
        f"{proposal.unassigned_share:.0%} fell in no cluster. Examples have PII redacted.</p>"
        "<table><thead><tr><th>category</th><th>status</th><th>share</th><th>size</th><th>cohesion</th>"
        "<th>answers alike</th><th>PII</th><th>keywords and examples</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></body></html>"
    )
    write_text_atomic(path, page)
    return Path(path)
