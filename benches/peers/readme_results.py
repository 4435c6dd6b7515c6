#!/usr/bin/env python3
"""Writes the forward results table of README.md from a committed report.

    python3 benches/peers/readme_results.py benches/results/<report>.json

Replaces everything between the `<!-- results:begin -->` and
`<!-- results:end -->` lines of README.md with a table of the report's rows
(sorted fastest last, as in the report's order otherwise), the run's
conditions and a link to the report, so the README never quotes numbers by
hand. Needs only the standard library.
"""

import argparse
import json
import pathlib
import sys

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def table(report, report_path, readme_dir):
    # Link the markdown report next to the JSON when there is one.
    path = pathlib.Path(report_path)
    if path.with_suffix(".md").exists():
        path = path.with_suffix(".md")
    link = path.resolve().relative_to(readme_dir.resolve())
    lines = [
        f"{report['gpu']}, {report['date']}, commit `{report['commit']}` "
        f"([report]({link.as_posix()})); median of the timed forwards:",
        "",
        "| system | median ms / forward | rel. L2 vs fp32 |",
        "| --- | ---: | ---: |",
    ]
    for row in sorted(report["rows"], key=lambda r: -r["median_ms"]):
        error = "—" if row["rel_l2_vs_fp32"] is None else f"{row['rel_l2_vs_fp32']:.3e}"
        lines.append(f"| {row['system']} | {row['median_ms']:.2f} | {error} |")
    return lines


def main():
    p = argparse.ArgumentParser()
    p.add_argument("report", type=pathlib.Path)
    p.add_argument("--readme", type=pathlib.Path, default=pathlib.Path("README.md"))
    a = p.parse_args()
    report = json.loads(a.report.read_text())
    text = a.readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{a.readme}: no `{BEGIN}` ... `{END}` block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = "\n".join(table(report, a.report, a.readme.parent))
    a.readme.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    print(f"{a.readme}: results from {a.report}")


if __name__ == "__main__":
    main()
