# The paper's figures as configured under `figures:` (see kdp/figures): 1 (inter-layer similarity), 3-5 (KDP
# training curves, kernel-space features, Theorem 1 norms, drawn from a variant's block fits), 6-7 (score against
# pruning ratio) and 8 (kernel size 2m).
import sys

from kdp.errors import UserError
from kdp.figures import check_figures

try:
    check_figures(config)
except UserError as error:
    sys.stderr.write(f"kdp-bench: {error}\n")
    sys.exit(1)

FIGURES = list(config.get("figures", {}))

FINAL_TARGETS.extend(
    f"results/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")
)

FIGURE_PNGS = [f"results/figures/{name}.png" for name in FIGURES]


rule figure:
    input:
        figure_rule_inputs,
    output:
        png="results/figures/{figure}.png",
        pdf="results/figures/{figure}.pdf",
    log:
        "logs/figure/{figure}.log",
    wildcard_constraints:
        figure="|".join(FIGURES) or "no-figures",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure.py"
