#!/usr/bin/env python3
"""Compare a bench's figures with the last recorded ones (benches/results.json), and record them.

Every bench pipes its figures here, one per line, tab-separated:

    ID  LABEL  VALUE  UNIT  RATIO  BASELINE  COMPARE  BETTER

  ID        stable key of the figure in the results file (e.g. c4_tps)
  LABEL     what is printed (e.g. "TPS, -M prepared -c 4")
  VALUE     the figure measured in this run (a number)
  UNIT      its unit (tps, ms, KiB, ...)
  RATIO     VALUE divided by the same figure of the same-run baseline, or "-" when there is none
  BASELINE  what RATIO is against (socat, direct, main, ...), or "-"
  COMPARE   "ratio" or "value": which of the two is compared with the record. Timings compare
            the ratio (machines are noisy and shared: only same-run ratios carry over from one run
            to the next); memory and round-trip counts compare the value.
  BETTER    "higher" or "lower": which way is an improvement

and gets each figure back three ways: the value, the ratio to its same-run baseline, and the
change against the recorded figure:

    TPS, -M prepared -c 4     10234 tps   1.12x socat   (recorded 1.11x at b973646 [from the issue]: +1%)

A change of more than 10% the wrong way is marked WORSE.

    python3 benches/record.py BENCH [--note TEXT] < figures.tsv
    RECORD=1 python3 benches/record.py BENCH < figures.tsv     # also write them as the new record

The results file (JSON, one entry per bench, written sorted so diffs stay small):

    {
      "BENCH": {
        "commit": "b973646",          # HEAD when measured (+dirty: src/ had uncommitted changes)
        "date": "2026-12-07",
        "note": "from the issue",     # free text: how, where, what was measured
        "figures": {
          "ID": {"label": ..., "value": 43.0, "unit": "KiB", "ratio": null, "baseline": null,
                 "compare": "value", "better": "lower"}
        }
      }
    }

Recording replaces the bench's whole entry (figures not in this run are dropped); commit the
file with the change it measures. RESULTS=path points at another file (default: beside this
script); RECORD_COMMIT=REV names the commit when the build measured is not this tree's (BIN=...).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

WORSE_BEYOND = 0.10


def number(text):
    return None if text in ("-", "") else float(text)


def read_figures(stream):
    figures = {}
    for line_no, line in enumerate(stream, 1):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 8:
            sys.exit(f"record.py: line {line_no}: expected 8 tab-separated fields, got {len(parts)}: {line!r}")
        fid, label, value, unit, ratio, baseline, compare_by, better = parts
        if compare_by not in ("ratio", "value"):
            sys.exit(f"record.py: line {line_no}: COMPARE must be ratio or value, not {compare_by!r}")
        if better not in ("higher", "lower"):
            sys.exit(f"record.py: line {line_no}: BETTER must be higher or lower, not {better!r}")
        try:
            figures[fid] = {
                "label": label,
                "value": number(value),
                "unit": unit,
                "ratio": number(ratio),
                "baseline": None if baseline == "-" else baseline,
                "compare": compare_by,
                "better": better,
            }
        except ValueError:
            sys.exit(f"record.py: line {line_no}: VALUE and RATIO must be numbers (or -): {line!r}")
    return figures


def fmt(x):
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def compare(fig, old, where):
    """The third column: the change against the recorded figure."""
    if old is None:
        return "(nothing recorded)"
    use_ratio = fig["compare"] == "ratio"
    now, then = (fig["ratio"], old.get("ratio")) if use_ratio else (fig["value"], old.get("value"))
    if then is None or now is None:
        return f"(recorded at {where} without a {'ratio' if use_ratio else 'value'})"
    shown = f"{then:.2f}x" if use_ratio else f"{fmt(then)} {old.get('unit', '')}".rstrip()
    if then == 0:
        return f"(recorded {shown} at {where})"
    change = now / then - 1
    worse = change < -WORSE_BEYOND if fig["better"] == "higher" else change > WORSE_BEYOND
    return f"(recorded {shown} at {where}: {change:+.0%}){'  WORSE' if worse else ''}"


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    def git(*args):
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        # Uncommitted changes to what is built (not to the results file itself) are flagged.
        if git("status", "--porcelain", "--", "../src", "../Cargo.toml", "../Cargo.lock", "../build.rs"):
            commit += "+dirty"
        return commit
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench", help="the bench's name: its entry in the results file")
    parser.add_argument("--note", default="", help="free text kept with a RECORD=1 entry")
    args = parser.parse_args()

    path = os.environ.get("RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
    try:
        with open(path) as f:
            results = json.load(f)
    except FileNotFoundError:
        results = {}
    except json.JSONDecodeError as e:
        sys.exit(f"record.py: {path} is not valid JSON: {e}")

    figures = read_figures(sys.stdin)
    if not figures:
        sys.exit("record.py: no figures on standard input")
    recorded = results.get(args.bench, {})
    where = recorded.get("commit", "?")
    if recorded.get("note"):
        where += f" [{recorded['note']}]"
    old_figures = recorded.get("figures", {})

    print(f"== {args.bench}: value, same-run ratio, change against the recorded figure ==")
    width = max(len(f["label"]) for f in figures.values())
    for fid, fig in figures.items():
        value = f"{fmt(fig['value'])} {fig['unit']}"
        ratio = f"{fig['ratio']:.2f}x {fig['baseline']}" if fig["ratio"] is not None else "-"
        print(f"{fig['label']:<{width}}  {value:>14}  {ratio:<14}  {compare(fig, old_figures.get(fid), where)}")

    if os.environ.get("RECORD") == "1":
        results[args.bench] = {
            "commit": os.environ.get("RECORD_COMMIT") or git_commit(),
            "date": datetime.date.today().isoformat(),
            "note": args.note,
            "figures": figures,
        }
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(path + ".tmp", path)
        print(f"recorded as {args.bench} at {results[args.bench]['commit']} in {path}")


if __name__ == "__main__":
    main()
