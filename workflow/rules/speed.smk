# Measured speed-up (Table 10): each job loads the dense base and one variant and times them alternately on the
# same input, so both ratios come from one machine state. Analytic FLOPs of both are recorded beside them.


rule speed:
    input:
        base="results/models/{model}/base",
        variant="results/models/{model}/{variant}",
    output:
        "results/speed/{model}/{variant}.json",
    log:
        "logs/speed/{model}/{variant}.log",
    benchmark:
        "benchmarks/speed/{model}/{variant}.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=sized_mem_mb(8000, model_copies=2),
        runtime=sized_runtime(15, 3),
    script:
        "../scripts/speed.py"
