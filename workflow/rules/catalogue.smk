# Stage 0: the halo and galaxy catalogue (synthetic universe or MDPL2 files).


rule catalogue:
    input:
        unpack(catalogue_inputs),
    output:
        halos=up("catalogue/halos.h5"),
        galaxies=up("catalogue/galaxies.h5"),
        tail_halos=up("catalogue/tail_halos.h5"),
        tail_galaxies=up("catalogue/tail_galaxies.h5"),
    params:
        simulation=config["simulation"],
        cosmology=config["cosmology"],
        seed=config["seed"],
    log:
        up("logs/catalogue.log"),
    benchmark:
        up("benchmarks/catalogue.tsv")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/catalogue.yaml"
    script:
        "../scripts/catalogue.py"
