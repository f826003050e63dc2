# kdp-bench: rebuild the KDP paper's tables (ICLR 2026) for every configured model and variant.
# The DAG follows the paper's pipeline: model -> calibration -> hidden states -> similarity / block choice
# -> pruned variant -> evaluation -> tables.
from snakemake.utils import min_version

min_version("9.0")


# Exactly one config: the file(s) given with --configfile, which replace the embedded default whole (the paper
# profile is `--configfile=config/paper.yaml`), else config/config.yaml. Values given with --config apply on top of
# either. No embedded model, calibration set or variant leaks into a profile that does not name it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prefetch.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/speed.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        FINAL_TARGETS,
