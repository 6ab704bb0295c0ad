# Stages 1-4: halo selection, sightlines, projection, flux limit, flat-mass splits.


rule select_halos:
    input:
        halos=up("catalogue/halos.h5"),
        tail_halos=up("catalogue/tail_halos.h5"),
    output:
        hosts=up("mock/hosts.h5"),
    params:
        selection=config["selection"],
    log:
        up("logs/select_halos.log"),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/mock.yaml"
    script:
        "../scripts/select_halos.py"


rule sightlines:
    input:
        hosts=up("mock/hosts.h5"),
    output:
        sightlines=up("mock/sightlines.h5"),
    params:
        sightlines=config["sightlines"],
        selection=config["selection"],
        seed=config["seed"],
    log:
        up("logs/sightlines.log"),
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/mock.yaml"
    script:
        "../scripts/sightlines.py"


rule project:
    input:
        halos=up("catalogue/halos.h5"),
        galaxies=up("catalogue/galaxies.h5"),
        tail_halos=up("catalogue/tail_halos.h5"),
        tail_galaxies=up("catalogue/tail_galaxies.h5"),
        hosts=up("mock/hosts.h5"),
        sightlines=up("mock/sightlines.h5"),
    output:
        projected=up("mock/projected.h5"),
    params:
        window=config["window"],
        selection=config["selection"],
        cosmology=config["cosmology"],
    log:
        up("logs/project.log"),
    benchmark:
        up("benchmarks/project.tsv")
    threads: 2                  # forked processes over halo batches (the same file for any)
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/mock.yaml"
    script:
        "../scripts/project.py"


rule flux_limit:
    input:
        projected=up("mock/projected.h5"),
    output:
        fluxlimited=res("mock/fluxlimited.h5"),
    params:
        mock=product_params("mock"),
        survey_depth=(config["survey"]["source"], config["survey"]["synthetic"]["radius_mpc_h"],
                      config["survey"]["catalogue_volume"]["z_max"]),
        cosmology=config["cosmology"],
        seed=config["seed"],
        **nuisance_params(),
    log:
        res("logs/flux_limit.log"),
    benchmark:
        res("benchmarks/flux_limit.tsv")
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/mock.yaml"
    script:
        "../scripts/flux_limit.py"


# A checkpoint: the number of KDE shards per split is read from its output.
checkpoint split:
    input:
        fluxlimited=res("mock/fluxlimited.h5"),
    output:
        clusters=res("mock/clusters.h5"),
    params:
        splits=config["splits"],
        seed=config["seed"],
    log:
        res("logs/split.log"),
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/mock.yaml"
    script:
        "../scripts/split.py"


rule mock_summary:
    input:
        halos=up("catalogue/halos.h5"),
        hosts=up("mock/hosts.h5"),
        clusters=res("mock/clusters.h5"),
    output:
        summary=res("mock/summary.json"),
    params:
        bin_width_dex=config["sightlines"]["bin_width_dex"],
        selection=config["selection"],
    log:
        res("logs/mock_summary.log"),
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../../envs/mock.yaml"
    script:
        "../scripts/mock_summary.py"
