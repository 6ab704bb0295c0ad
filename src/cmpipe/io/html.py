"""HTML renderings of the run's CSV tables, for ``snakemake --report``.

Snakemake's report shows images and HTML pages inline but offers CSV files only as downloads;
:func:`csv_to_html` turns a table into a small self-contained HTML page (no scripts, no
external resources) that the report displays. The CSV files stay the products.
"""
from __future__ import annotations

import csv
import html
import math

from .tables import atomic_output

__all__ = ["csv_to_html", "format_cell"]

STYLE = """body{font-family:sans-serif;font-size:13px;margin:8px}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
caption{text-align:left;font-weight:bold;padding:4px 0}p.note{color:#555}"""


def format_cell(value: str) -> str:
    """A CSV cell for display: numbers to 4 significant digits, NaN and empty as blank."""
    try:
        x = float(value)
    except ValueError:
        return value
    if math.isnan(x):
        return ""
    if x.is_integer() and abs(x) < 1e15 and "." not in value and "e" not in value.lower():
        return str(int(x))
    return f"{x:.4g}"


def csv_to_html(csv_path, html_path, *, title: str, max_rows: int = 2000) -> int:
    """Write the CSV table ``csv_path`` as an HTML table to ``html_path``.

    Parameters
    ----------
    csv_path, html_path : path-like
    title : str
        Caption above the table.
    max_rows : int
        At most this many data rows are shown (a note says how many were left out).

    Returns
    -------
    int
        Number of data rows in the CSV file.
    """
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    shown = body[:max_rows]
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
           f"<table><caption>{html.escape(title)} ({len(body)} rows)</caption>",
           "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
           + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(format_cell(c))}</td>" for c in row) + "</tr>"
            for row in shown]
    out.append("</tbody></table>")
    if len(body) > len(shown):
        out.append(f'<p class="note">First {len(shown)} of {len(body)} rows; the CSV file '
                   "has them all.</p>")
    out.append("</body></html>")
    with atomic_output(html_path) as tmp:
        tmp.write_text("\n".join(out) + "\n")
    return len(body)
