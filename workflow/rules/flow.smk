# The neural-flow estimator (Kodi Ramanah et al. 2020, arXiv:2003.05951): 2-D (R_proj, v)
# KDE images -> a conditional normalizing flow P(log M | image) trained on the training
# split (early stopping on validation) -> eval-set and survey posteriors; and the comparison
# of CNN3D + SBI, the flow, M-sigma and virial on contaminated and pure catalogues.


rule flow_images:
    input:
        clusters=res("mock/clusters.h5"),
    output:
        images=res("flow/images/{split}.h5"),
    params:
        n_grid=config["flow"]["n_grid"],
        kde=product_params("kde"),
        window=config["window"],
    log:
        res("logs/flow/images-{split}.log"),
    benchmark:
        res("benchmarks/flow/images-{split}.tsv")
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/kde.yaml"
    script:
        "../scripts/flow_images.py"


rule flow_survey_images:
    input:
        phase_space=res("survey/phase_space.h5"),
    output:
        images=res("flow/images/survey.h5"),
    params:
        n_grid=config["flow"]["n_grid"],
        kde=product_params("kde"),
        window=config["window"],
    log:
        res("logs/flow/images-survey.log"),
    benchmark:
        res("benchmarks/flow/images-survey.tsv")
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/kde.yaml"
    script:
        "../scripts/flow_survey_images.py"


rule flow_train:
    input:
        train=flow_input("train"),
        validation=flow_input("validation"),
    output:
        model=res("flow/model/flow.pt"),
        meta=res("flow/model/flow.json"),
        history=res("flow/model/history.csv"),
    params:
        flow=product_params("flow"),
        seed=config["seed"],
    log:
        res("logs/flow/train.log"),
    benchmark:
        res("benchmarks/flow_train.tsv")
    threads: 1                  # the small flow: 1 torch thread is ~5x faster than 2 on a busy
                                # 2-core machine (OpenMP barriers), and frees a core
    priority: 10  # ahead of the analyses: the misspecification shards wait for it
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/flow_train.py"


rule flow_calibrate:
    input:
        model=res("flow/model/flow.pt"),
        meta=res("flow/model/flow.json"),
        images=flow_input("test"),
        clusters=res("mock/clusters.h5"),
    output:
        joint_pdf=res("flow/joint_pdf.h5"),
    params:
        calibration=config["calibration"],
    log:
        res("logs/flow/calibrate.log"),
    benchmark:
        res("benchmarks/flow/calibrate.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    priority: 10  # ahead of the analyses: the misspecification shards wait for it
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/flow_calibrate.py"


rule flow_evaluate:
    input:
        model=res("flow/model/flow.pt"),
        meta=res("flow/model/flow.json"),
        images=flow_input("eval"),
        clusters=res("mock/clusters.h5"),
        joint_pdf=flow_joint_pdf(),
    output:
        metrics=res("flow/metrics.json"),
        posteriors=res("flow/posteriors.h5"),
    params:
        calibration=config["calibration"],
    log:
        res("logs/flow/evaluate.log"),
    benchmark:
        res("benchmarks/flow/evaluate.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/flow_evaluate.py"


rule flow_survey_posteriors:
    input:
        model=res("flow/model/flow.pt"),
        meta=res("flow/model/flow.json"),
        images=flow_input("survey"),
        phase_space=res("survey/phase_space.h5"),
        joint_pdf=flow_joint_pdf(),
    output:
        posteriors=res("flow/survey_posteriors.ecsv"),
        csv=res("flow/survey_posteriors.csv"),
    params:
        calibration=config["calibration"],
        survey=config["survey"],
        cosmology=config["cosmology"],
    log:
        res("logs/flow/survey_posteriors.log"),
    benchmark:
        res("benchmarks/flow/survey_posteriors.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/flow_survey_posteriors.py"


rule flow_plots:
    input:
        history=res("flow/model/history.csv"),
        metrics=res("flow/metrics.json"),
        posteriors=res("flow/posteriors.h5"),
    output:
        loss=report(
            res("figures/flow_loss.png"),
            caption="../report/flow_loss.rst",
            category="5. Neural flow and comparison",
            subcategory="Neural flow",
        ),
        predictions=report(
            res("figures/flow_predictions.png"),
            caption="../report/flow_predictions.rst",
            category="5. Neural flow and comparison",
            subcategory="Neural flow",
        ),
        calibration=report(
            res("figures/flow_calibration.png"),
            caption="../report/flow_calibration.rst",
            category="5. Neural flow and comparison",
            subcategory="Neural flow",
        ),
    log:
        res("logs/flow/plots.log"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/flow_plots.py"


rule compare:
    input:
        unpack(compare_inputs),
    output:
        summary=res("comparison/summary.json"),
        csv=report(
            res("comparison/summary.csv"),
            caption="../report/comparison_table.rst",
            category="5. Neural flow and comparison",
            subcategory="Comparison",
        ),
        figure=report(
            res("figures/comparison.png"),
            caption="../report/comparison.rst",
            category="5. Neural flow and comparison",
            subcategory="Comparison",
        ),
    params:
        compare=config["compare"],
        members=config["mock"]["members"],
        other_runs=compare_other_runs(),    # the pure and fiducial runs' products it reads
    log:
        res("logs/compare.log"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/compare.py"
