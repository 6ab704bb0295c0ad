# Stages 6-7: CNN training (GPU when there is one) and the test/eval summaries d~.


rule train:
    input:
        train=res("cubes/train.h5"),
        validation=res("cubes/validation.h5"),
    output:
        model=res("model/cnn3d.keras"),
        history=res("model/history.csv"),
        normalisation=res("model/normalisation.json"),
    params:
        train=product_params("train"),
        seed=config["seed"],
    log:
        res("logs/train.log"),
    benchmark:
        res("benchmarks/train.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    priority: 10  # ahead of the analyses: the misspecification shards wait for it
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train.py"


rule summaries:
    input:
        model=res("model/cnn3d.keras"),
        cubes=res("cubes/{split}.h5"),
    output:
        predictions=res("summaries/{split}.h5"),
    log:
        res("logs/summaries/{split}.log"),
    benchmark:
        res("benchmarks/summaries/{split}.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/summaries.py"
