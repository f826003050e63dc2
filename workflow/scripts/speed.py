from kdp.speed import speed
from kdp.steps import run

run(speed, snakemake.log[0], snakemake.threads, config=snakemake.config, model=snakemake.wildcards.model,
    variant=snakemake.wildcards.variant, base_dir=snakemake.input.base, variant_dir=snakemake.input.variant,
    out_json=snakemake.output[0])
