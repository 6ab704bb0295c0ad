# Stage 0: the halo and galaxy catalogue (synthetic universe or MDPL2 files).


rule catalogue:
    input:
        unpack(catalogue_inputs),
    output:
        halos=res("catalogue/halos.h5"),
        galaxies=res("catalogue/galaxies.h5"),
        tail_halos=res("catalogue/tail_halos.h5"),
        tail_galaxies=res("catalogue/tail_galaxies.h5"),
    params:
        simulation=config["simulation"],
        cosmology=config["cosmology"],
        seed=config["seed"],
    log:
        res("logs/catalogue.log"),
    benchmark:
        res("benchmarks/catalogue.tsv")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/catalogue.yaml"
    script:
        "../scripts/catalogue.py"
