# Pruned variants: one rule for every registered method. Methods fitted per block (KDP and its ablations) get
# one independent job per selected block first, so blocks train in parallel on a cluster.


rule fit_block:
    input:
        unpack(fit_inputs),
    output:
        directory("results/kdp/{model}/{variant}/{block}"),
    params:
        settings=variant_settings,
    log:
        "logs/fit_block/{model}/{variant}/{block}.log",
    benchmark:
        "benchmarks/fit_block/{model}/{variant}/{block}.tsv"
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=sized_mem_mb(8000, model_copies=1.5),
        runtime=sized_runtime(30, 15),
    script:
        "../scripts/fit_block.py"


rule prune:
    input:
        unpack(method_inputs),
    output:
        directory("results/models/{model}/{variant}"),
    params:
        settings=variant_settings,
    log:
        "logs/prune/{model}/{variant}.log",
    benchmark:
        "benchmarks/prune/{model}/{variant}.tsv"
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=sized_mem_mb(8000, model_copies=2.5),
        runtime=sized_runtime(60, 40),
    script:
        "../scripts/prune.py"
