# One evaluation rule for every variant: lm-evaluation-harness on the in-memory model, local task YAMLs.


rule build_tasks:
    output:
        directory(f"results/tasks/{config['evaluation']['suite']}"),
    params:
        settings=tasks_settings,
    log:
        "logs/build_tasks.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/build_tasks.py"


rule evaluate:
    input:
        variant="results/models/{model}/{variant}",
        tasks=f"results/tasks/{config['evaluation']['suite']}",
        assets=evaluation_assets,
    output:
        "results/eval/{model}/{variant}.json",
    params:
        settings=evaluation_settings,
    log:
        "logs/evaluate/{model}/{variant}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{variant}.tsv"
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=sized_mem_mb(8000, model_copies=1.5),
        runtime=sized_runtime(30, 15),
    script:
        "../scripts/evaluate.py"
