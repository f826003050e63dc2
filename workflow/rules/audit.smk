# The claims audit: the paper's printed numbers against each other (resources/claims), against analytic counts,
# and against this run's tables where the configured models are the paper's. Its inputs are the configured
# tables only, so it never waits on variants no table shows.

FINAL_TARGETS.extend(
    ["results/audit.csv", "results/audit.tex", "results/audit_report.md"]
)


rule audit:
    input:
        **{name: f"results/{name}.csv" for name in config["tables"]},
    output:
        csv="results/audit.csv",
        tex="results/audit.tex",
        analogous="results/audit_analogous.csv",
    log:
        "logs/audit/audit.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/audit.py"


rule audit_report:
    input:
        csv="results/audit.csv",
        analogous="results/audit_analogous.csv",
        figures=FIGURE_PNGS,
    output:
        "results/audit_report.md",
    log:
        "logs/audit/audit_report.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/audit_report.py"
