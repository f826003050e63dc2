from pathlib import Path

from kdp.audit_report import audit_claims
from kdp.steps import run

run(audit_claims, snakemake.log[0], snakemake.threads, config=snakemake.config, out_csv=snakemake.output.csv,
    out_md=snakemake.output.md, claims_dir=Path(snakemake.input.claims[0]).parent)
