"""The README's first command, timed on a fresh clone: `make demo` (or `make quick`) end to end.

    python3 bench/end_to_end.py --target demo          # clones HEAD beside ../shared, times it
    python3 bench/end_to_end.py --target demo-organism # the organism's run (built first unless cached)
    python3 bench/end_to_end.py --collect CLONE --time-log LOG   # tabulate a run made by hand
    python3 bench/end_to_end.py --collect CLONE --time-log LOG --stages-from A/timings.json ...

A fresh run clones the repository's HEAD into a new folder next to the checkout (so that
``../shared`` is beside it, as in CI) and runs ``/usr/bin/time -v make TARGET`` there: the
virtual environment is created and every package installed, the embedded model converted,
and the whole job run. The wall time therefore includes the install (pip's download cache is
whatever the machine has). ``--collect`` reads the same two things from a run someone made
with that command: GNU time's report (wall clock, peak RSS) and the run's ``timings.json``
(seconds per stage). ``--stages-from`` composes an estimate instead, for a config change
whose longer stages were measured on their own: each stage takes the longest time any of
the files, the clone's own included, records for it; the install time stays the clone's, and
the wall clock becomes that install time plus the stages. The longest, because a stage
skipped or resumed by an invocation is recorded there with the time of its skip only; it
makes the estimate an upper bound where a change made a stage shorter.

Writes bench/results/end_to_end_<target>.{json,md}. Keep the machine otherwise quiet: the
time is only meaningful when nothing else shares the cores (the load averages are recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# stepdpo.hardware needs only the standard library, so this runs under a bare python3 too.
sys.path.insert(0, str(REPO / "src"))
from stepdpo.hardware import cpu_info, speed_flags  # noqa: E402
RESULTS = REPO / "bench" / "results"
RUN_DIRS = {"demo": "runs/default", "demo-organism": "runs/organism", "quick": "runs/quick"}


def parse_gnu_time(text: str) -> dict[str, float]:
    """Wall seconds and peak RSS (GiB) from ``/usr/bin/time -v`` output."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if wall is None or rss is None:
        raise SystemExit("no GNU time report (/usr/bin/time -v) in the time log")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return {"wall_s": round(seconds, 1), "peak_rss_gib": round(int(rss.group(1)) / 2**20, 2)}


def merged_stages(files: list[Path]) -> dict[str, float]:
    """Stage -> seconds over several timings.json files, the longest time of each stage."""
    merged: dict[str, float] = {}
    for path in files:
        for stage, seconds in json.loads(path.read_text(encoding="utf-8")).items():
            merged[stage] = max(seconds, merged.get(stage, 0.0))
    return merged


def collect(clone: Path, time_log: Path, target: str, stages_from: list[Path] | None = None) -> dict:
    timings_path = clone / RUN_DIRS[target] / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True, check=True).stdout.strip()
    measured = parse_gnu_time(time_log.read_text(encoding="utf-8", errors="replace"))
    install_s = round(measured["wall_s"] - sum(timings.values()), 1)
    composed = {}
    if stages_from:
        timings = merged_stages([timings_path, *stages_from])
        measured["wall_s"] = round(install_s + sum(timings.values()), 1)
        composed = {"composed_from": [str(path) for path in stages_from]}
    return {
        "target": target,
        "commit": commit,
        "clone": str(clone),
        **measured,
        **composed,
        "stages_s": timings,
        "stages_total_s": round(sum(timings.values()), 1),
        "install_and_other_s": install_s,
        "report_exists": (clone / RUN_DIRS[target] / "report" / "report.html").is_file(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_info()[0],
        "cpu_flags": speed_flags(),
        "time_log_mtime": datetime.fromtimestamp(time_log.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
    }


def fresh_run(target: str) -> tuple[Path, Path, list[float]]:
    clone = REPO.parent / f"e2e-{target}-{int(time.time())}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    time_log = clone.parent / f"{clone.name}.time.log"
    with time_log.open("w", encoding="utf-8") as log:
        status = subprocess.run(["/usr/bin/time", "-v", "make", target], cwd=clone, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"make {target} failed ({status}): see {time_log}")
    return clone, time_log, list(os.getloadavg())


def markdown(result: dict) -> str:
    lines = [
        f"# `make {result['target']}` end to end on a fresh clone",
        "",
        f"Commit {result['commit']} (the clone's), {result['cpu_count']} CPU threads ({result['cpu_model']}; "
        f"flags {' '.join(result['cpu_flags'])}); clone {result['clone']}.",
        "",
        *([f"**Composed, not one run**: install time and peak RSS from that clone's run; each stage its longest "
           f"time in that run or in {', '.join(result['composed_from'])}.", ""] if "composed_from" in result else []),
        f"- wall clock: **{result['wall_s'] / 60:.1f} min** (install, model conversion and every stage)",
        f"- peak RSS: {result['peak_rss_gib']} GiB",
        f"- stages: {result['stages_total_s'] / 60:.1f} min; install and the rest: {result['install_and_other_s'] / 60:.1f} min",
        f"- report written: {result['report_exists']}",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {name} | {seconds} |" for name, seconds in result["stages_s"].items()),
    ]
    if "load_average_end" in result:
        lines += ["", f"Load average at the end: {result['load_average_end']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(RUN_DIRS), default="demo")
    parser.add_argument("--collect", type=Path, help="an existing clone where `make TARGET` ran under /usr/bin/time -v")
    parser.add_argument("--time-log", type=Path, help="the output of that /usr/bin/time -v make TARGET (with --collect)")
    parser.add_argument("--stages-from", type=Path, nargs="+", help="with --collect: more timings.json files; each stage takes its longest recorded time")
    parser.add_argument("--out", type=Path, help="default: bench/results/end_to_end_<target>.json")
    args = parser.parse_args()
    if args.collect:
        if args.time_log is None:
            parser.error("--collect needs --time-log")
        result = collect(args.collect, args.time_log, args.target, args.stages_from)
    else:
        clone, time_log, load = fresh_run(args.target)
        result = {**collect(clone, time_log, args.target), "load_average_end": load}
    out = args.out or RESULTS / f"end_to_end_{args.target}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
