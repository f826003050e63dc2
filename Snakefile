# kdp-bench: rebuild the KDP paper's tables (ICLR 2026) for every configured model and variant.
# The DAG follows the paper's pipeline: model -> calibration -> hidden states -> similarity / block choice
# -> pruned variant -> evaluation -> tables.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/speed.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/kdp_figures.smk"


rule all:
    input:
        FINAL_TARGETS,
