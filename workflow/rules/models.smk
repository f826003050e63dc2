# Base models: embedded ones are built offline (SmolLM2 dequantised from GGUF, OPT pretrained on KJV text);
# hub ids (read from their prefetched snapshot) and local paths are checked and recorded.


rule base_model:
    input:
        unpack(model_asset),
    output:
        directory("results/models/{model}/base"),
    params:
        settings=model_settings,
    log:
        "logs/base_model/{model}.log",
    benchmark:
        "benchmarks/base_model/{model}.tsv"
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=sized_mem_mb(4000, model_copies=1),
        runtime=sized_runtime(30, 10),
    script:
        "../scripts/base_model.py"
