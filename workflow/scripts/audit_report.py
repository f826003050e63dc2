from kdp.audit_report import audit_report
from kdp.steps import run

run(audit_report, snakemake.log[0], snakemake.threads, config=snakemake.config, audit_csv=snakemake.input.csv,
    analogous_csv=snakemake.input.analogous, figure_pngs=list(snakemake.input.figures), out_md=snakemake.output[0],
    claims_dir=snakemake.params.claims)
