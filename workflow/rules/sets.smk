# The set-based estimator (Wang, Thiele & Ho 2026): each cluster's window galaxies as a set
# -> a Deep Sets embedding and a conditional normalizing flow P(log M | galaxies, D), trained
# on the training split (early stopping on validation) -> calibrated on the test split as
# the neural flow is -> eval-set and survey posteriors (cmpipe.flow.sets, cmpipe.stages.sets).


rule set_inputs:
    input:
        clusters=res("mock/clusters.h5"),
    output:
        sets=res("sets/inputs/{split}.h5"),
    wildcard_constraints:
        split="train|validation|test|eval",
    params:
        window=config["window"],
    log:
        res("logs/sets/inputs-{split}.log"),
    benchmark:
        res("benchmarks/sets/inputs-{split}.tsv")
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/set_inputs.py"


rule set_survey_inputs:
    input:
        phase_space=res("survey/phase_space.h5"),
    output:
        sets=res("sets/inputs/survey.h5"),
    params:
        window=config["window"],
    log:
        res("logs/sets/inputs-survey.log"),
    benchmark:
        res("benchmarks/sets/inputs-survey.tsv")
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/set_survey_inputs.py"


rule set_train:
    input:
        train=res("sets/inputs/train.h5"),
        validation=res("sets/inputs/validation.h5"),
    output:
        model=res("sets/{seeddir}model/flow.pt"),
        meta=res("sets/{seeddir}model/flow.json"),
        history=res("sets/{seeddir}model/history.csv"),
    wildcard_constraints:
        seeddir=r"(seeds/[1-9][0-9]*/)?",
    params:
        sets=product_params("sets"),
        seed=config["seed"],
    log:
        res("logs/sets/{seeddir}train.log"),
    benchmark:
        res("benchmarks/sets/{seeddir}train.tsv")
    threads: 1                  # a small network, as the flow: one torch thread each, so two
                                # trainings (seeds, the flow) share the two cores
    priority: 10  # ahead of the analyses: the misspecification shards wait for it
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/set_train.py"


rule set_calibrate:
    input:
        model=res("sets/{seeddir}model/flow.pt"),
        meta=res("sets/{seeddir}model/flow.json"),
        sets=res("sets/inputs/test.h5"),
        clusters=res("mock/clusters.h5"),
    output:
        joint_pdf=res("sets/{seeddir}joint_pdf.h5"),
    wildcard_constraints:
        seeddir=r"(seeds/[1-9][0-9]*/)?",
    params:
        calibration=config["calibration"],
    log:
        res("logs/sets/{seeddir}calibrate.log"),
    benchmark:
        res("benchmarks/sets/{seeddir}calibrate.tsv")
    threads: 1
    priority: 10  # ahead of the analyses: the misspecification shards wait for it
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/set_calibrate.py"


rule set_evaluate:
    input:
        model=res("sets/{seeddir}model/flow.pt"),
        meta=res("sets/{seeddir}model/flow.json"),
        sets=res("sets/inputs/eval.h5"),
        clusters=res("mock/clusters.h5"),
        joint_pdf=set_joint_pdf,
    output:
        metrics=res("sets/{seeddir}metrics.json"),
        posteriors=res("sets/{seeddir}posteriors.h5"),
    wildcard_constraints:
        seeddir=r"(seeds/[1-9][0-9]*/)?",
    params:
        calibration=config["calibration"],
    log:
        res("logs/sets/{seeddir}evaluate.log"),
    benchmark:
        res("benchmarks/sets/{seeddir}evaluate.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/set_evaluate.py"


rule set_survey_posteriors:
    input:
        model=res("sets/model/flow.pt"),
        meta=res("sets/model/flow.json"),
        sets=res("sets/inputs/survey.h5"),
        phase_space=res("survey/phase_space.h5"),
        joint_pdf=set_joint_pdf,
    output:
        posteriors=res("sets/survey_posteriors.ecsv"),
        csv=res("sets/survey_posteriors.csv"),
    params:
        calibration=config["calibration"],
        survey=config["survey"],
        cosmology=config["cosmology"],
    log:
        res("logs/sets/survey_posteriors.log"),
    benchmark:
        res("benchmarks/sets/survey_posteriors.tsv")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/set_survey_posteriors.py"


rule set_seeds:
    input:
        metrics=[res("sets/metrics.json")]
        + [res(f"sets/seeds/{k}/metrics.json") for k in range(1, config["ablation"]["seeds"])],
    output:
        summary=res("sets/seeds.json"),
    log:
        res("logs/sets/seeds.log"),
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/set_seeds.py"


rule set_plots:
    input:
        history=res("sets/model/history.csv"),
        metrics=res("sets/metrics.json"),
        posteriors=res("sets/posteriors.h5"),
    output:
        loss=report(
            res("figures/sets_loss.png"),
            caption="../report/sets_loss.rst",
            category="5. Neural flow and comparison",
            subcategory="Set estimator",
        ),
        predictions=report(
            res("figures/sets_predictions.png"),
            caption="../report/sets_predictions.rst",
            category="5. Neural flow and comparison",
            subcategory="Set estimator",
        ),
        calibration=report(
            res("figures/sets_calibration.png"),
            caption="../report/sets_calibration.rst",
            category="5. Neural flow and comparison",
            subcategory="Set estimator",
        ),
    log:
        res("logs/sets/plots.log"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/flow.yaml"
    script:
        "../scripts/set_plots.py"
