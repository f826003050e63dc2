"""bench/dag_profile.py reads a Snakemake log as Snakemake 9 writes it: jobs, their times, benchmark files and the
critical path through outputs that other jobs read."""

from __future__ import annotations

from pathlib import Path

from tests.maintainer_scripts import BENCH, load_script

profile = load_script("dag_profile", BENCH)

LOG = """\
Building DAG of jobs...
Execute 1 jobs...
[Fri Dec  4 19:00:00 2026]
localrule base_model:
    output: results/models/m/base
    log: logs/base_model/m.log
    jobid: 3
    benchmark: benchmarks/base_model/m.tsv
    reason: Missing output files: results/models/m/base
    wildcards: model=m
    threads: 2
Shell command: None
Select jobs to execute...
[Fri Dec  4 19:00:10 2026]
Finished jobid: 3 (Rule: base_model)
1 of 4 steps (25%) done
Execute 2 jobs...
[Fri Dec  4 19:00:10 2026]
localrule prune:
    input: results/models/m/base, results/calib/m/standard.safetensors
    output: results/models/m/a
    jobid: 5
    wildcards: model=m, variant=a
Shell command: None
[Fri Dec  4 19:00:10 2026]
localrule prune:
    input: results/models/m/base/config.json
    output: results/models/m/b
    jobid: 6
    benchmark: benchmarks/prune/m/b.tsv
    wildcards: model=m, variant=b
Shell command: None
[Fri Dec  4 19:00:40 2026]
Finished jobid: 5 (Rule: prune)
[Fri Dec  4 19:01:10 2026]
Finished jobid: 6 (Rule: prune)
[Fri Dec  4 19:01:10 2026]
localrule evaluate:
    input: results/models/m/a
    output: results/eval/m/a.json
    jobid: 7
    wildcards: model=m, variant=a
Shell command: None
[Fri Dec  4 19:01:30 2026]
Finished jobid: 7 (Rule: evaluate)
[Fri Dec  4 19:01:30 2026]
localrule evaluate:
    input: results/models/m/b
    output: results/eval/m/b.json
    jobid: 8
    wildcards: model=m, variant=b
Shell command: None
"""

BENCHMARK = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t0\t1\n"


def _jobs(tmp_path: Path):
    log = tmp_path / "run.log"
    log.write_text(LOG)
    for name, seconds, rss in [("base_model/m.tsv", 12.5, 900.0), ("prune/m/b.tsv", 55.0, 1500.0)]:
        (tmp_path / "benchmarks" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "benchmarks" / name).write_text(BENCHMARK.format(s=seconds, rss=rss))
    jobs = profile.parse_log(log)
    profile.read_benchmarks(jobs, tmp_path)
    return {job.jobid: job for job in jobs}


def test_finished_jobs_with_benchmark_seconds_or_log_times(tmp_path):
    jobs = _jobs(tmp_path)
    assert sorted(jobs) == [3, 5, 6, 7]  # job 8 never finished
    assert jobs[5].wildcards == {"model": "m", "variant": "a"}
    assert jobs[5].inputs == ["results/models/m/base", "results/calib/m/standard.safetensors"]
    assert (jobs[3].seconds, jobs[3].max_rss_mib) == (12.5, 900.0)  # from the benchmark file
    assert (jobs[5].seconds, jobs[5].max_rss_mib) == (30.0, None)  # from the log: no benchmark file
    assert jobs[6].seconds == 55.0


def test_critical_path_follows_outputs_read_as_inputs_or_inside_them(tmp_path):
    jobs = _jobs(tmp_path)
    # 3 -> 6 (reads a file inside 3's output directory): 12.5 + 55 beats 3 -> 5 -> 7: 12.5 + 30 + 20.
    assert [job.jobid for job in profile.critical_path(list(jobs.values()))] == [3, 6]


def test_rule_table_sums_per_rule_and_model(tmp_path):
    rows = profile.rule_table(list(_jobs(tmp_path).values()))
    assert rows[0] == ("prune", "m", 2, 85.0, 55.0, 1500.0)
    assert ("evaluate", "m", 1, 20.0, 20.0, None) in rows
    text = profile.report(list(_jobs(tmp_path).values()), path_jobs=5)
    assert "4 jobs, wall 1.5 min" in text and "critical path: 2 jobs, 1.1 min" in text
