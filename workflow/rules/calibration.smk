# Calibration tokens, the layer-by-layer hidden-state cache every method shares, and the inter-layer
# similarity (Figure 1) from which KDP's blocks are chosen.


rule calibration:
    input:
        base="results/models/{model}/base",
        sources=calibration_assets,
    output:
        "results/calib/{model}/{calibration}.safetensors",
    params:
        settings=calibration_settings,
    log:
        "logs/calibration/{model}/{calibration}.log",
    conda:
        "../../environment.yml"
    resources:
        mem_mb=calibration_mem_mb,
        runtime=calibration_runtime,
    script:
        "../scripts/calibration.py"


rule capture_hidden_states:
    input:
        base="results/models/{model}/base",
        calibration="results/calib/{model}/{calibration}.safetensors",
    output:
        directory("results/hidden/{model}/{calibration}"),
    params:
        settings=capture_settings,
    log:
        "logs/capture_hidden_states/{model}/{calibration}.log",
    benchmark:
        "benchmarks/capture_hidden_states/{model}/{calibration}.tsv"
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=sized_mem_mb(8000, piece_copies=3),
        runtime=sized_runtime(20, 5),
    script:
        "../scripts/capture_hidden_states.py"


rule similarity:
    input:
        base="results/models/{model}/base",
        calibration="results/calib/{model}/{calibration}.safetensors",
        hidden="results/hidden/{model}/{calibration}",
    output:
        npz="results/similarity/{model}/{calibration}.npz",
        csv="results/similarity/{model}/{calibration}.csv",
    params:
        settings=similarity_settings,
    log:
        "logs/similarity/{model}/{calibration}.log",
    benchmark:
        "benchmarks/similarity/{model}/{calibration}.tsv"
    conda:
        "../../environment.yml"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "../scripts/similarity.py"


checkpoint select_blocks:
    input:
        similarity=f"results/similarity/{{model}}/{CAPTURE_CALIBRATION}.npz",
    output:
        "results/blocks/{model}/{variant}.json",
    params:
        settings=variant_settings,
    log:
        "logs/select_blocks/{model}/{variant}.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/select_blocks.py"
