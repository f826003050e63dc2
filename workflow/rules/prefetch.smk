# Hub assets, fetched once into the Hugging Face cache by local rules (they run on the submit host, where the
# internet is), then read offline by every job (kdp/prefetch.py). `snakemake prefetch --configfile=...` runs only
# this part and writes results/prefetch/manifest.json; a full run runs it first by itself.
rule prefetch:
    input:
        [f"results/prefetch/models/{model}.json" for model in HUB_MODELS],
        [f"results/prefetch/calibration/{source}.json" for source in CALIBRATION_ROWS],
        ["results/prefetch/evaluation.json"] if EVALUATION_ON_HUB else [],
    output:
        "results/prefetch/manifest.json",
    log:
        "logs/prefetch/manifest.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/prefetch.py"


rule prefetch_model:
    output:
        "results/prefetch/models/{model}.json",
    params:
        repo=lambda wildcards: HUB_MODELS[wildcards.model][0],
        revision=lambda wildcards: HUB_MODELS[wildcards.model][1],
    log:
        "logs/prefetch/models/{model}.log",
    wildcard_constraints:
        model="|".join(HUB_MODELS) or "no-hub-models",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/prefetch.py"


rule prefetch_calibration:
    output:
        "results/prefetch/calibration/{source}.json",
    params:
        rows=lambda wildcards: CALIBRATION_ROWS[wildcards.source],
    log:
        "logs/prefetch/calibration/{source}.log",
    wildcard_constraints:
        source="|".join(CALIBRATION_ROWS) or "no-hub-sources",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/prefetch.py"


rule prefetch_evaluation:
    output:
        "results/prefetch/evaluation.json",
    params:
        settings=tasks_settings,
    log:
        "logs/prefetch/evaluation.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/prefetch.py"
