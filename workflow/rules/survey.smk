# Stages 10-11: survey inference (synthetic SDSS-like survey or your GalWeight/SDSS tables ->
# the mock's window -> cubes -> network -> calibrated posteriors) and the cluster mass
# function against Tinker et al. (2008). Plus the run's resolved config and the model's
# config record for `cmpipe infer`.


# The model's config record and the resolved config are written after the products they
# describe (a failed run leaves the previous ones); `cmpipe infer` checks them against each
# other. model_config has no params on purpose: it reruns only when the model does.
rule model_config:
    input:
        model=res("model/cnn3d.keras"),
        normalisation=res("model/normalisation.json"),
    output:
        record=res("model/config.json"),
    log:
        res("logs/model_config.log"),
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/survey.yaml"
    script:
        "../scripts/model_config.py"


rule resolved_config:
    input:
        # the set estimator's model and calibration, for cmpipe infer --estimator sets
        # (sets.enabled)
        unpack(set_record_inputs),
        model_config=res("model/config.json"),
        model=res("model/cnn3d.keras"),
        normalisation=res("model/normalisation.json"),
        joint_pdf=res("calibration/joint_pdf.h5"),
        # the neural flow's model and calibration, recorded for cmpipe infer --estimator flow
        flow_model=res("flow/model/flow.pt"),
        flow_meta=res("flow/model/flow.json"),
        flow_joint_pdf=flow_joint_pdf(),
    output:
        config=res("config.resolved.yaml"),
    params:
        config=without_speed_keys(config),
    log:
        res("logs/resolved_config.log"),
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/survey.yaml"
    script:
        "../scripts/resolved_config.py"


rule survey_catalogue:
    input:
        unpack(survey_catalogue_inputs),
    output:
        clusters=res("survey/clusters.ecsv"),
        galaxies=res("survey/galaxies.ecsv"),
        truth=res("survey/truth.ecsv"),
        meta=res("survey/meta.json"),
    params:
        # the keys this rule reads (params are rerun triggers: a mass-function setting
        # must not rebuild the survey)
        survey=survey_params("source", "synthetic", "clusters", "galaxies",
                             "cluster_columns", "galaxy_columns", "angle_unit",
                             "catalogue_volume"),
        cosmology=config["cosmology"],
        seed=config["seed"],
        fibre_arcsec=config["nuisance"]["fibre_collision_arcsec"],
    log:
        res("logs/survey_catalogue.log"),
    benchmark:
        res("benchmarks/survey_catalogue.tsv")
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/survey.yaml"
    script:
        "../scripts/survey_catalogue.py"


rule survey_cubes:
    input:
        clusters=res("survey/clusters.ecsv"),
        galaxies=res("survey/galaxies.ecsv"),
    output:
        cubes=res("survey/cubes.h5"),
        phase_space=res("survey/phase_space.h5"),
    params:
        survey=survey_params("min_galaxies", "pair_by_cluster_id", "angle_unit"),
        window=config["window"],
        kde=product_params("kde"),
        cosmology=config["cosmology"],
        min_galaxies=config["mock"]["min_galaxies"],
    log:
        res("logs/survey_cubes.log"),
    benchmark:
        res("benchmarks/survey_cubes.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/survey.yaml"
    script:
        "../scripts/survey_cubes.py"


rule survey_posteriors:
    input:
        model=res("model/cnn3d.keras"),
        normalisation=res("model/normalisation.json"),
        joint_pdf=res("calibration/joint_pdf.h5"),
        cubes=res("survey/cubes.h5"),
        phase_space=res("survey/phase_space.h5"),
    output:
        posteriors=res("survey/posteriors.ecsv"),
        csv=report(
            res("survey/posteriors.csv"),
            caption="../report/posteriors_table.rst",
            category="4. Survey inference",
            subcategory="Tables",
        ),
    params:
        cosmology=config["cosmology"],
        population_prior=config["survey"]["population_prior"],
        sample_log10_m_min=(config["survey"]["source"],
                            config["survey"]["synthetic"]["log10_m_min"]),
    log:
        res("logs/survey_posteriors.log"),
    benchmark:
        res("benchmarks/survey_posteriors.tsv")
    threads: 1                  # two one-thread jobs side by side (README, run time)
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/survey.yaml"
    script:
        "../scripts/survey_posteriors.py"


rule mass_function:
    input:
        posteriors=res("survey/posteriors.ecsv"),
        meta=res("survey/meta.json"),
        truth=res("survey/truth.ecsv"),
        joint_pdf=res("calibration/joint_pdf.h5"),
        test_predictions=res("summaries/test.h5"),
        mock_clusters=res("mock/clusters.h5"),
    output:
        mass_function=report(
            res("survey/mass_function.csv"),
            caption="../report/mass_function_table.rst",
            category="4. Survey inference",
            subcategory="Tables",
        ),
        pulls=res("survey/pulls.json"),
        mass_function_png=report(
            res("figures/mass_function.png"),
            caption="../report/mass_function.rst",
            category="4. Survey inference",
            subcategory="Figures",
        ),
        pulls_png=report(
            res("figures/survey_pulls.png"),
            caption="../report/survey_pulls.rst",
            category="4. Survey inference",
            subcategory="Figures",
        ),
    params:
        mass_function=config["survey"]["mass_function"],
        distance_aware=config["calibration"]["distance_aware"],
        cosmology=config["cosmology"],
        seed=config["seed"],
    log:
        res("logs/mass_function.log"),
    benchmark:
        res("benchmarks/mass_function.tsv")
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/survey.yaml"
    script:
        "../scripts/mass_function.py"
