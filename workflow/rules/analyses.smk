# The paper's remaining analyses (issue 8): dimensionality ablation (paper Figs. 7, 8),
# robustness to survey perturbations and saliency maps (talk slides). Named targets:
#   snakemake ablation | robustness | saliency | analyses


rule ablation_inputs:
    input:
        clusters=res("mock/clusters.h5"),
    output:
        **{s: res(f"ablation/{{dim}}/inputs/{s}.h5") for s in SPLITS},
    params:
        ablation=ablation_params(),
        kde=product_params("kde"),
        window=config["window"],
    wildcard_constraints:
        dim="1d|2d",
    log:
        res("logs/ablation/{dim}-inputs.log"),
    benchmark:
        res("benchmarks/ablation/{dim}-inputs.tsv")
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/kde.yaml"
    script:
        "../scripts/ablation_inputs.py"


rule ablation_train:
    input:
        unpack(ablation_train_inputs),
    output:
        model=res("ablation/{dim}/{seeddir}model/cnn{dim}.keras"),
        history=res("ablation/{dim}/{seeddir}model/history.csv"),
        normalisation=res("ablation/{dim}/{seeddir}model/normalisation.json"),
    params:
        train=product_params("train"),
        # the CNN3D's seeds (and the cube-only CNN3D) train as rule train does: the ablation
        # section does not apply
        ablation=lambda wildcards: {} if wildcards.dim.startswith("3d") else ablation_params(),
        seed=config["seed"],
    wildcard_constraints:
        dim="1d|2d|3d|3dcube",
        seeddir=r"(seeds/[1-9][0-9]*/)?",
    log:
        res("logs/ablation/{seeddir}{dim}-train.log"),
    benchmark:
        res("benchmarks/ablation/{seeddir}{dim}-train.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        # the CNN3Ds (extra seeds, cube-only): rule train's GPU, memory and time
        gpu=lambda wildcards: 1 if wildcards.dim.startswith("3d") else 0,
        mem_mb=lambda wildcards: 8000 if wildcards.dim.startswith("3d") else 4000,
        runtime=lambda wildcards: 240 if wildcards.dim.startswith("3d") else 120,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/ablation_train.py"


rule ablation_evaluate:
    input:
        unpack(ablation_evaluate_inputs),
    output:
        test=res("ablation/{dim}/{seeddir}summaries/test.h5"),
        eval=res("ablation/{dim}/{seeddir}summaries/eval.h5"),
        joint_pdf=res("ablation/{dim}/{seeddir}joint_pdf.h5"),
        metrics=res("ablation/{dim}/{seeddir}metrics.json"),
    params:
        calibration=config["calibration"],
    wildcard_constraints:
        dim="1d|2d|3d|3dcube",
        seeddir=r"(seeds/[1-9][0-9]*/)?",
    log:
        res("logs/ablation/{seeddir}{dim}-evaluate.log"),
    benchmark:
        res("benchmarks/ablation/{seeddir}{dim}-evaluate.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/ablation_evaluate.py"


rule ablation_summary:
    input:
        metrics_1d=res("ablation/1d/metrics.json"),
        metrics_2d=res("ablation/2d/metrics.json"),
        metrics_3d=res("evaluation/metrics.json"),
        seeds_1d=ablation_seed_metrics("1d"),
        seeds_2d=ablation_seed_metrics("2d"),
        seeds_3d=ablation_seed_metrics("3d"),
    output:
        summary=res("ablation/summary.json"),
    log:
        res("logs/ablation/summary.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/calibrate.yaml"
    script:
        "../scripts/ablation_summary.py"


rule ablation_plots:
    input:
        summary=res("ablation/summary.json"),
    output:
        figure=report(
            res("ablation/scatter.png"),
            caption="../report/ablation.rst",
            category="6. Analyses",
            subcategory="Dimensionality ablation",
        ),
    log:
        res("logs/ablation/plots.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/ablation_plots.py"


rule perturbed_eval:
    input:
        model=res("model/cnn3d.keras"),
        normalisation=res("model/normalisation.json"),
        joint_pdf=res("calibration/joint_pdf.h5"),
        clusters=res("mock/clusters.h5"),
        eval=res("summaries/eval.h5"),
    output:
        summary=res("robustness/summary.json"),
        predictions=res("robustness/predictions.h5"),
    params:
        robustness=config["robustness"],
        kde=product_params("kde"),
        calibration=config["calibration"],
    log:
        res("logs/robustness/perturbed_eval.log"),
    benchmark:
        res("benchmarks/robustness.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/perturbed_eval.py"


rule robustness_plots:
    input:
        summary=res("robustness/summary.json"),
    output:
        figure=report(
            res("robustness/robustness.png"),
            caption="../report/robustness.rst",
            category="6. Analyses",
            subcategory="Robustness",
        ),
    log:
        res("logs/robustness/plots.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/robustness_plots.py"


# The companion runs this run reads (compare.pure_run, compare.fiducial_run), built inside
# its DAG when their overlays are set (compare.pure_overlay, fiducial_overlay): one job per
# run, a Snakemake of its own on half the cores, beside this run's jobs; it reads the shared
# upstream products (results/upstream/) that this run makes first.
rule companion_run:
    input:
        projected=up("mock/projected.h5"),
    output:
        record=res("companions/{companion}.json"),
    wildcard_constraints:
        companion=companion_names(),
    params:
        command=lambda wc: companion_command(companion_key(wc.companion)),
        products=lambda wc: companion_products(companion_key(wc.companion)),
        trigger=lambda wc: companion_trigger(companion_key(wc.companion)),
    log:
        res("logs/companion_run/{companion}.log"),
    benchmark:
        res("benchmarks/companion_run/{companion}.tsv")
    threads: companion_threads()
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/companion.yaml"
    script:
        "../scripts/companion_run.py"


rule misspecification_shard:
    input:
        unpack(set_record_inputs),
        unpack(lambda wc: fiducial_run_inputs(misspecification_fiducial())),
        model=res("model/cnn3d.keras"),
        normalisation=res("model/normalisation.json"),
        joint_pdf=res("calibration/joint_pdf.h5"),
        flow_model=res("flow/model/flow.pt"),
        flow_joint_pdf=flow_joint_pdf(),
        projected=up("mock/projected.h5"),
        clusters=res("mock/clusters.h5"),
        eval=res("summaries/eval.h5"),
    output:
        rows=temp(res("robustness/misspecification/shard-{shard}.json")),
    params:
        shard=lambda wildcards: int(wildcards.shard),
        n_shards=misspecification_shards(),
        **misspecification_params(),
    log:
        res("logs/robustness/misspecification-{shard}.log"),
    benchmark:
        res("benchmarks/misspecification/shard-{shard}.tsv")
    threads: 1                  # one-thread shards side by side (README, run time)
    priority: 5   # as soon as its models are in, beside the analyses
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/misspecification.yaml"
    script:
        "../scripts/misspecification_shard.py"


rule misspecification:
    input:
        shards=lambda wildcards: [res(f"robustness/misspecification/shard-{k:04d}.json")
                                  for k in range(misspecification_shards())],
    output:
        summary=res("robustness/misspecification.json"),
        table=report(
            res("robustness/misspecification.csv"),
            caption="../report/misspecification_table.rst",
            category="6. Analyses",
            subcategory="Misspecification",
        ),
    log:
        res("logs/robustness/misspecification.log"),
    benchmark:
        res("benchmarks/misspecification.tsv")
    params:
        **misspecification_params(),  # the shards are temporary: a change reruns all
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/misspecification.yaml"
    script:
        "../scripts/misspecification.py"


rule misspecification_plots:
    input:
        summary=res("robustness/misspecification.json"),
    output:
        figure=report(
            res("robustness/misspecification.png"),
            caption="../report/misspecification.rst",
            category="6. Analyses",
            subcategory="Misspecification",
        ),
    log:
        res("logs/robustness/misspecification_plots.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/misspecification_plots.py"


rule saliency_maps:
    input:
        model=res("model/cnn3d.keras"),
        normalisation=res("model/normalisation.json"),
        cubes=res("cubes/eval.h5"),
    output:
        saliency=res("saliency/saliency.h5"),
        summary=res("saliency/summary.json"),
    params:
        saliency=config["saliency"],
    log:
        res("logs/saliency/maps.log"),
    benchmark:
        res("benchmarks/saliency.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/saliency_maps.py"


rule saliency_plots:
    input:
        saliency=res("saliency/saliency.h5"),
    output:
        mean=report(
            res("saliency/mean.png"),
            caption="../report/saliency_mean.rst",
            category="6. Analyses",
            subcategory="Saliency",
        ),
        abs=report(
            res("saliency/abs.png"),
            caption="../report/saliency_abs.rst",
            category="6. Analyses",
            subcategory="Saliency",
        ),
    log:
        res("logs/saliency/plots.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/saliency_plots.py"


rule ablation:
    input:
        ablation_products(),


rule robustness:
    input:
        robustness_products(),


rule saliency:
    input:
        saliency_products(),


rule analyses:
    input:
        ablation_products(),
        robustness_products(),
        saliency_products(),
