# Figures 3, 4 and 5 of the paper (KDP training dynamics, kernel-space heatmaps, Theorem 1 norms), drawn from the
# per-block fits of the main KDP variant of every model (KDP_FIGURE_VARIANT in common.smk).

KDP_FIGURE_FILES = {
    f"figure{number}_{fmt}": f"results/figures/figure{number}_{{model}}.{fmt}"
    for number in (3, 4, 5)
    for fmt in ("png", "pdf")
}

if KDP_FIGURE_VARIANT in VARIANTS:
    FINAL_TARGETS.extend(
        path.format(model=model) for model in MODELS for path in KDP_FIGURE_FILES.values()
    )


rule kdp_figures:
    input:
        kdp_figure_inputs,
    output:
        **KDP_FIGURE_FILES,
    params:
        variant=KDP_FIGURE_VARIANT,
    log:
        "logs/kdp_figures/{model}.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/kdp_figures.py"
