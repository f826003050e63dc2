"""Where one Snakemake run spent its time: wall time and peak memory per rule and model, and the DAG's critical path.

    python bench/dag_profile.py .snakemake/log/<run>.snakemake.log            # from the project root of the run
    python bench/dag_profile.py /tmp/cmd1/.snakemake/log/<run>.log --root /tmp/cmd1 --path-jobs 40

Everything comes from the run's own records: Snakemake's log gives each job's rule, wildcards, input and output
paths and its start and finish times; the ``benchmark:`` file the job wrote (``benchmarks/<rule>/...tsv``) gives
its wall seconds and peak RSS where it exists (the log's times otherwise). Printed:

* the run: wall time from the first job's start to the last job's finish, summed job time, and their ratio (how
  many jobs ran at once on average);
* one row per rule and model: jobs, summed and largest wall seconds, largest peak RSS;
* the critical path: the chain of jobs, linked by one job's output being another's input, whose summed wall time
  is the largest. With unlimited cores the run could not finish sooner than this; on 2 cores the summed job time
  divided by the cores bounds it from the other side.

Tokens scored per evaluation are measured by ``bench/eval_speed.py``, which runs one variant's evaluation with
per-forward counters.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")
FIELD = re.compile(r"^    (\w+): (.*)$")


@dataclass(eq=False)  # jobs are nodes of a graph: identity, not value, makes two equal
class Job:
    jobid: int
    rule: str
    start: datetime
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    wildcards: dict[str, str] = field(default_factory=dict)
    benchmark: str | None = None
    finish: datetime | None = None
    seconds: float = 0.0
    max_rss_mib: float | None = None

    @property
    def model(self) -> str:
        return self.wildcards.get("model", "-")

    @property
    def label(self) -> str:
        return " ".join([self.rule, *(f"{k}={v}" for k, v in self.wildcards.items())])


def _paths(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_log(path: Path) -> list[Job]:
    """The jobs a Snakemake log reports as started and finished."""
    jobs: dict[int, Job] = {}
    stamp: datetime | None = None
    block: dict[str, str] | None = None  # the indented fields under one "rule <name>:" line
    for line in path.read_text().splitlines() + [""]:
        if block is not None and (m := FIELD.match(line)):
            block[m.group(1)] = m.group(2)
            continue
        if block is not None and "jobid" in block:
            job = _job(block, stamp)
            jobs[job.jobid] = job
        block = None
        if m := TIMESTAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            block = {"rule": m.group(1)}
        elif (m := FINISHED.match(line)) and int(m.group(1)) in jobs:
            jobs[int(m.group(1))].finish = stamp
    return [job for job in jobs.values() if job.finish is not None]


def _job(block: dict[str, str], start: datetime) -> Job:
    wildcards = dict(item.split("=", 1) for item in _paths(block.get("wildcards", "")))
    return Job(int(block["jobid"]), block["rule"], start, _paths(block.get("input", "")),
               _paths(block.get("output", "")), wildcards, block.get("benchmark"))


def read_benchmarks(jobs: list[Job], root: Path) -> None:
    """Each job's wall seconds and peak RSS from its benchmark file; the log's times where there is none."""
    for job in jobs:
        job.seconds = (job.finish - job.start).total_seconds()
        tsv = root / job.benchmark if job.benchmark else None
        if tsv is not None and tsv.is_file():
            with tsv.open() as handle:
                row = next(csv.DictReader(handle, delimiter="\t"))
            job.seconds = float(row["s"])
            job.max_rss_mib = float(row["max_rss"]) if row["max_rss"] not in ("", "-", "NA") else None


def critical_path(jobs: list[Job]) -> list[Job]:
    """The chain of dependent jobs with the largest summed wall time (a job depends on another when one of its
    inputs is the other's output or lies inside it)."""
    ordered = sorted(jobs, key=lambda job: (job.start, job.jobid))
    producer: dict[str, Job] = {out: job for job in ordered for out in job.outputs}
    best: dict[int, tuple[float, Job | None]] = {}
    for job in ordered:
        parents = {producer[p] for p in _producing_paths(job.inputs, producer)} - {job}
        head = max(parents, key=lambda parent: best[parent.jobid][0], default=None)
        best[job.jobid] = ((best[head.jobid][0] if head else 0.0) + job.seconds, head)
    end = max(ordered, key=lambda job: best[job.jobid][0])
    path = [end]
    while (previous := best[path[-1].jobid][1]) is not None:
        path.append(previous)
    return path[::-1]


def _producing_paths(inputs: list[str], producer: dict[str, Job]) -> list[str]:
    found = []
    for path in inputs:
        parts = Path(path).parts
        found += [str(Path(*parts[:n])) for n in range(len(parts), 0, -1) if str(Path(*parts[:n])) in producer][:1]
    return found


def rule_table(jobs: list[Job]) -> list[tuple]:
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in jobs:
        groups[(job.rule, job.model)].append(job)
    rows = []
    for (rule, model), members in groups.items():
        rss = [job.max_rss_mib for job in members if job.max_rss_mib is not None]
        rows.append((rule, model, len(members), sum(job.seconds for job in members),
                     max(job.seconds for job in members), max(rss) if rss else None))
    return sorted(rows, key=lambda row: -row[3])


def report(jobs: list[Job], path_jobs: int) -> str:
    wall = (max(job.finish for job in jobs) - min(job.start for job in jobs)).total_seconds()
    summed = sum(job.seconds for job in jobs)
    lines = [f"run: {len(jobs)} jobs, wall {wall / 60:.1f} min, summed job time {summed / 60:.1f} min, "
             f"jobs at once on average {summed / wall if wall else float('nan'):.2f}", "",
             "| rule | model | jobs | wall s (sum) | wall s (largest job) | peak RSS MiB (max) |",
             "|---|---|---|---|---|---|"]
    for rule, model, count, total, largest, rss in rule_table(jobs):
        lines.append(f"| {rule} | {model} | {count} | {total:.0f} | {largest:.0f} | "
                     f"{'-' if rss is None else f'{rss:.0f}'} |")
    chain = critical_path(jobs)
    lines += ["", f"critical path: {len(chain)} jobs, {sum(job.seconds for job in chain) / 60:.1f} min", "",
              "| job | wall s |", "|---|---|"]
    shown = sorted(chain, key=lambda job: -job.seconds)[:path_jobs]
    lines += [f"| {job.label} | {job.seconds:.0f} |" for job in chain if job in shown]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="a Snakemake log (.snakemake/log/*.snakemake.log)")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="the directory the run ran in (benchmark paths are relative to it)")
    parser.add_argument("--path-jobs", type=int, default=20,
                        help="the longest jobs of the critical path to list (in path order)")
    args = parser.parse_args()
    jobs = parse_log(args.log)
    if not jobs:
        raise SystemExit(f"{args.log}: no finished job found; is it a Snakemake log?")
    read_benchmarks(jobs, args.root)
    print(report(jobs, args.path_jobs))


if __name__ == "__main__":
    main()
