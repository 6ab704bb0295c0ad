# Stage 5: 3D Gaussian KDE cubes, sharded (scatter) and gathered per split.


rule kde_shard:
    input:
        clusters=res("mock/clusters.h5"),
    output:
        cubes=temp(res("cubes/{split}/shard-{shard}.h5")),
    log:
        res("logs/kde/{split}-{shard}.log"),
    benchmark:
        res("benchmarks/kde/{split}-{shard}.tsv")
    params:
        shard=lambda wildcards: int(wildcards.shard),
        shard_size=lambda wildcards: shard_size_of(wildcards.split),
        kde=product_params("kde"),
        window=config["window"],
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/kde.yaml"
    script:
        "../scripts/kde_shard.py"


rule kde_gather:
    input:
        shards=kde_shard_files,
    output:
        cubes=res("cubes/{split}.h5"),
    log:
        res("logs/kde/{split}-gather.log"),
    benchmark:
        res("benchmarks/kde/{split}-gather.tsv")
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../envs/kde.yaml"
    script:
        "../scripts/kde_gather.py"
