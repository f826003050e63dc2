from kdp.figures import draw_figure
from kdp.steps import run

run(draw_figure, snakemake.log[0], snakemake.threads, config=snakemake.config, name=snakemake.wildcards.figure,
    inputs=list(snakemake.input), out_png=snakemake.output.png, out_pdf=snakemake.output.pdf)
