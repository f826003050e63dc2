from kdp.steps import base_model, run

run(base_model, snakemake.log[0], snakemake.threads, config=snakemake.config,
    model=snakemake.wildcards.model, out_dir=snakemake.output[0], asset=snakemake.input.get("asset"))
