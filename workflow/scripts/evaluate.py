from kdp.steps import evaluate, run

run(evaluate, snakemake.log[0], snakemake.threads, config=snakemake.config, model=snakemake.wildcards.model,
    variant=snakemake.wildcards.variant, variant_dir=snakemake.input.variant, tasks_dir=snakemake.input.tasks,
    out_json=snakemake.output[0], assets=list(snakemake.input.assets))
