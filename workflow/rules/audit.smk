# The claims audit, in two steps. `audit_claims` checks the paper's printed numbers against each other and against
# analytic counts of the shipped model configs: it reads only the claims folder (config `audit.claims`) and
# resources/model_configs, so it runs in seconds. `audit` joins that with this run's tables where the configured
# models are the paper's; its inputs are the configured tables only, so it never waits on variants no table shows.
import sys
from pathlib import Path

from kdp.audit.claims import claims_folder_inputs
from kdp.errors import UserError

try:
    # `audit.claims`, relative to the checkout unless absolute: a missing folder or a bad paper.yaml is one line
    # before any job runs.
    AUDIT_CLAIMS, AUDIT_CLAIMS_FILES = claims_folder_inputs(config["audit"]["claims"], workflow.basedir)
except UserError as error:
    sys.stderr.write(f"kdp-bench: {error}\n")
    sys.exit(1)

FINAL_TARGETS.extend(
    ["results/audit/claims.csv", "results/audit/claims.md", "results/audit.csv", "results/audit.tex",
     "results/audit_report.md"]
)


rule audit_claims:
    input:
        claims=AUDIT_CLAIMS_FILES,
        model_configs=sorted(Path(workflow.basedir).glob("resources/model_configs/*.json")),
    output:
        csv="results/audit/claims.csv",
        md="results/audit/claims.md",
    log:
        "logs/audit/audit_claims.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/audit_claims.py"


rule audit:
    input:
        claims="results/audit/claims.csv",
        **{name: f"results/{name}.csv" for name in config["tables"]},
    output:
        csv="results/audit.csv",
        tex="results/audit.tex",
        analogous="results/audit_analogous.csv",
    params:
        claims=str(AUDIT_CLAIMS),
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
    params:
        claims=str(AUDIT_CLAIMS),
    log:
        "logs/audit/audit_report.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/audit_report.py"
