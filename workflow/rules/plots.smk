# Figures: cheap rules of their own, so changing a figure never reruns a heavy stage.


rule mock_plots:
    input:
        summary=res("mock/summary.json"),
        clusters=res("mock/clusters.h5"),
    output:
        mass_function=res("figures/mock_mass_function.png"),
        splits=res("figures/mock_split_masses.png"),
        phase_space=res("figures/mock_phase_space.png"),
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
        loss_curve=res("figures/loss_curve.png"),
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
        joint_pdf=res("figures/joint_pdf.png"),
        predictions=res("figures/predictions.png"),
        calibration=res("figures/calibration.png"),
        interlopers=res("figures/interlopers.png"),
        baselines=res("figures/baselines.png"),
    log:
        res("logs/evaluation_plots.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/evaluation_plots.py"
