from kdp.audit_report import audit_tables
from kdp.steps import run

tables = {name: snakemake.input[name] for name in snakemake.config["tables"]}
run(audit_tables, snakemake.log[0], snakemake.threads, config=snakemake.config, claims_csv=snakemake.input.claims,
    table_csvs=tables, out_csv=snakemake.output.csv, out_tex=snakemake.output.tex,
    out_analogous=snakemake.output.analogous, claims_dir=snakemake.params.claims)
