from kdp.steps import calibration, run

run(calibration, snakemake.log[0], snakemake.threads, config=snakemake.config, model=snakemake.wildcards.model,
    name=snakemake.wildcards.calibration, base_dir=snakemake.input.base, out_path=snakemake.output[0],
    sources=list(snakemake.input.sources))
