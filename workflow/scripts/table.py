from kdp.steps import run
from kdp.table_kinds import table

run(table, snakemake.log[0], snakemake.threads, config=snakemake.config, name=snakemake.wildcards.table,
    files={role: list(paths) for role, paths in snakemake.input.items()}, out_csv=snakemake.output.csv,
    out_tex=snakemake.output.tex)
