from kdp.kdp_figures import kdp_figures_step
from kdp.steps import run

run(kdp_figures_step, snakemake.log[0], snakemake.threads, config=snakemake.config, model=snakemake.wildcards.model,
    variant=snakemake.params.variant, fit_dirs=list(snakemake.input), outputs=dict(snakemake.output.items()))
