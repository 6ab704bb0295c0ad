# Figures: cheap rules of their own, so changing a figure never reruns a heavy stage.


rule mock_plots:
    input:
        summary=res("mock/summary.json"),
        clusters=res("mock/clusters.h5"),
    output:
        mass_function=report(
            res("figures/mock_mass_function.png"),
            caption="../report/mock_mass_function.rst",
            category="1. Mock catalogue",
            subcategory="Figures",
        ),
        splits=report(
            res("figures/mock_split_masses.png"),
            caption="../report/mock_split_masses.rst",
            category="1. Mock catalogue",
            subcategory="Figures",
        ),
        phase_space=report(
            res("figures/mock_phase_space.png"),
            caption="../report/mock_phase_space.rst",
            category="1. Mock catalogue",
            subcategory="Figures",
        ),
    log:
        res("logs/mock_plots.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/mock_plots.py"


rule training_plots:
    input:
        history=res("model/history.csv"),
    output:
        loss_curve=report(
            res("figures/loss_curve.png"),
            caption="../report/loss_curve.rst",
            category="2. Training",
            subcategory="Figures",
        ),
    log:
        res("logs/training_plots.log"),
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/training_plots.py"


rule evaluation_plots:
    input:
        joint_pdf=res("calibration/joint_pdf.h5"),
        test=res("summaries/test.h5"),
        metrics=res("evaluation/metrics.json"),
        posteriors=res("evaluation/posteriors.h5"),
    output:
        joint_pdf=report(
            res("figures/joint_pdf.png"),
            caption="../report/joint_pdf.rst",
            category="3. Calibration and evaluation",
            subcategory="Figures",
        ),
        predictions=report(
            res("figures/predictions.png"),
            caption="../report/predictions.rst",
            category="3. Calibration and evaluation",
            subcategory="Figures",
        ),
        calibration=report(
            res("figures/calibration.png"),
            caption="../report/calibration.rst",
            category="3. Calibration and evaluation",
            subcategory="Figures",
        ),
        interlopers=report(
            res("figures/interlopers.png"),
            caption="../report/interlopers.rst",
            category="3. Calibration and evaluation",
            subcategory="Figures",
        ),
        baselines=report(
            res("figures/baselines.png"),
            caption="../report/baselines.rst",
            category="3. Calibration and evaluation",
            subcategory="Figures",
        ),
    log:
        res("logs/evaluation_plots.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/evaluation_plots.py"


# The report shows HTML inline but offers CSV only as a download: the key tables as HTML.
rule report_tables:
    input:
        metrics=res("evaluation/metrics.csv"),
        comparison=res("comparison/summary.csv"),
        mass_function=res("survey/mass_function.csv"),
        posteriors=res("survey/posteriors.csv"),
    output:
        metrics=report(
            res("report/metrics.html"),
            caption="../report/metrics_table.rst",
            category="3. Calibration and evaluation",
            subcategory="Tables",
        ),
        comparison=report(
            res("report/comparison.html"),
            caption="../report/comparison_table.rst",
            category="5. Neural flow and comparison",
            subcategory="Comparison",
        ),
        mass_function=report(
            res("report/mass_function.html"),
            caption="../report/mass_function_table.rst",
            category="4. Survey inference",
            subcategory="Tables",
        ),
        posteriors=report(
            res("report/posteriors.html"),
            caption="../report/posteriors_table.rst",
            category="4. Survey inference",
            subcategory="Tables",
        ),
    log:
        res("logs/report_tables.log"),
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/report_tables.py"
