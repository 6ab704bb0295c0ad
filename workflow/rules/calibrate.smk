# Stages 8-9: the SBI calibration (joint PDF over the test set) and the evaluation.


rule calibrate:
    input:
        test=res("summaries/test.h5"),
        clusters=res("mock/clusters.h5"),
    output:
        joint_pdf=res("calibration/joint_pdf.h5"),
    params:
        calibration=config["calibration"],
    log:
        res("logs/calibrate.log"),
    benchmark:
        res("benchmarks/calibrate.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    priority: 10  # ahead of the analyses: the misspecification shards wait for it
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/calibrate.yaml"
    script:
        "../scripts/calibrate.py"


rule evaluate:
    input:
        joint_pdf=res("calibration/joint_pdf.h5"),
        test=res("summaries/test.h5"),
        eval=res("summaries/eval.h5"),
        clusters=res("mock/clusters.h5"),
    output:
        metrics=res("evaluation/metrics.json"),
        posteriors=res("evaluation/posteriors.h5"),
    params:
        calibration=config["calibration"],
        baselines=config["baselines"],
    log:
        res("logs/evaluate.log"),
    benchmark:
        res("benchmarks/evaluate.tsv")
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/calibrate.yaml"
    script:
        "../scripts/evaluate.py"


rule metrics_table:
    input:
        metrics=res("evaluation/metrics.json"),
    output:
        table=report(
            res("evaluation/metrics.csv"),
            caption="../report/metrics_table.rst",
            category="3. Calibration and evaluation",
            subcategory="Tables",
        ),
    log:
        res("logs/metrics_table.log"),
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/metrics_table.py"
