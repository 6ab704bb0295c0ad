# Shared helpers: config validation, output paths, final targets.
import sys
from pathlib import Path

from snakemake.logging import logger

from cmpipe.io.artefacts import stable_paths
from cmpipe.sections import CONFIG_SCHEMA, without_speed_keys
from cmpipe.runstate import (blocking_run, clear_stale_locks, record_lock_owner,
                             remove_orphaned_temps)
from cmpipe.settings import (ConfigError, check_output_dir, prepend_pythonpath,
                             validate_workflow_config)

# Jobs run in envs/*.yaml (--sdm conda) find the cmpipe package of this checkout.
prepend_pythonpath(Path(workflow.basedir) / "src")


# The config files re-read strictly (duplicated keys, 1.0e7 a number), the schema, the
# semantic checks (split fractions, layer specs, ranges, cross-key constraints, a safe run
# name), the input files of the chosen sources and a writable output directory: all
# before the first job. A bad config is one line naming the file and the key, exit 1.
def _config_files():
    """The config files as Snakemake applies them, each once and spelt the same whichever
    way they were given (cmpipe.io.artefacts.stable_paths)."""
    return stable_paths([*workflow.configfiles, *workflow.config_settings.configfiles])


try:
    validate_workflow_config(
        # the schema is package data: the copy of the cmpipe that runs the jobs (this
        # checkout's src when run from it, an installed cmpipe beside a bare workflow)
        config, CONFIG_SCHEMA,
        files=_config_files(), overrides=workflow.config_settings.config)
    if workflow.is_main_process:
        check_output_dir(f"results/{config['run']}")
except ConfigError as _err:
    logger.error(f"cmpipe: {_err}")
    sys.exit(1)

RESULTS = f"results/{config['run']}"
# The products upstream of the flux limit (catalogue, hosts, sightlines, projection) live in
# a directory named by the config keys that define them (cmpipe.io.artefacts.upstream_key),
# so runs that differ only downstream (the pure catalogue, the fiducial model, the
# nuisance variants) build them once and share them.
from cmpipe.io.artefacts import UPSTREAM_ROOT, upstream_key

UPSTREAM = f"{UPSTREAM_ROOT}/{upstream_key(config)}"

if workflow.is_main_process:
    # After a crash (kill -9) the same command resumes: the dead run's lock is cleared here,
    # before Snakemake locks, only if no Snakemake process is alive in this directory
    # (cmpipe.runstate; a live run still locks others out).
    for _f in clear_stale_locks(".")[:1]:
        logger.warning(f"cmpipe: removed stale Snakemake locks in {_f.parent} (the run that "
                       "held them is dead); resuming")
    # A live run holds the lock: say so (Snakemake's own message suggests --unlock, which
    # would let two runs write the same files). Dry runs and lock-free commands go on.
    _pid = blocking_run(sys.argv[1:], ".")
    if _pid is not None:
        logger.error(f"cmpipe: a run (Snakemake, PID {_pid}) is active in {Path.cwd()}. "
                     f"Fix: wait for it to finish, or stop it (kill {_pid}) and "
                     "rerun this command, which resumes it")
        sys.exit(1)


onstart:
    # lock held: record its owner, drop temp files (.NAME.tmp-PID) of killed jobs
    record_lock_owner(".")
    for _f in remove_orphaned_temps("results")[:1]:
        logger.warning("cmpipe: removed orphaned temporary files of killed jobs under results/")


def res(path):
    """Path of a product of this run (results/{run}/...)."""
    return f"{RESULTS}/{path}"


def up(path):
    """Path of a shared upstream product (results/upstream/{key}/...)."""
    return f"{UPSTREAM}/{path}"


def nuisance_params():
    """The nuisance section as a parameter of flux_limit (its rerun trigger) only when the
    mock departs from the fiducial universe (cmpipe.mock.nuisance.is_active), so that a
    fiducial run's products keep their identity."""
    from cmpipe.mock.nuisance import is_active
    from cmpipe.sections import NuisanceSettings

    nu = config["nuisance"]
    return {"nuisance": nu} if is_active(NuisanceSettings.from_dict(nu)) else {}


def product_params(section):
    """A config section as a rule's params (its rerun triggers), without the speed-only
    keys of cmpipe.sections.SPEED_ONLY_KEYS (a faster setting reruns nothing)."""
    return without_speed_keys(config[section], section)


def survey_params(*keys):
    """The named keys of the survey config section (a rule's params: its rerun triggers)."""
    return {k: config["survey"][k] for k in keys}


def catalogue_inputs(wildcards):
    """The user's catalogue files when the source is mdpl2 (none for the synthetic box)."""
    sim = config["simulation"]
    if sim["source"] == "mdpl2":
        return {"halo_file": sim["mdpl2"]["halo_file"],
                "galaxy_file": sim["mdpl2"]["galaxy_file"]}
    return {}


def survey_catalogue_inputs(wildcards):
    """The synthetic box (survey.source: synthetic) or the user's survey files."""
    sv = config["survey"]
    if sv["source"] == "catalogue":
        return {"clusters_file": sv["clusters"], "galaxies_file": sv["galaxies"]}
    return {"halos": up("catalogue/halos.h5"), "galaxies": up("catalogue/galaxies.h5")}


SPLITS = ["train", "validation", "test", "eval"]


wildcard_constraints:
    split="|".join(SPLITS),
    shard=r"\d{4}",


def shard_size_of(split):
    """The KDE shard size of a split: the one its gathered cubes were made with, if any."""
    from cmpipe.stages import gathered_shard_size

    return gathered_shard_size(res(f"cubes/{split}.h5"), config["kde"]["shard_size"])


def misspecification_shards():
    """The misspecification matrix's shard count: the one its finished JSON was made with,
    if any (robustness.misspecification_shards is speed-only, as kde.shard_size)."""
    from cmpipe.stages import recorded_shards

    return recorded_shards(res("robustness/misspecification.json"),
                           config["robustness"]["misspecification_shards"])


def kde_shard_files(wildcards):
    """Shard files of one split; their number follows from the split checkpoint and the
    shard size. kde.shard_size is speed-only: the shard size recorded in an existing
    gathered file is kept, so a new shard size changes no input set (Snakemake's input
    rerun trigger) and reruns nothing; it applies when the cubes are made anew."""
    from cmpipe.stages import n_shards, split_counts

    clusters = checkpoints.split.get().output.clusters
    n = split_counts(clusters)[wildcards.split]
    k = n_shards(n, shard_size_of(wildcards.split))
    return [res(f"cubes/{wildcards.split}/shard-{i:04d}.h5") for i in range(k)]


def flow_input(split):
    """The neural flow's input file of a split (or "survey"): the 2-D (R_proj, v) images
    (flow.input: 2d) or the CNN3D's cubes (3d)."""
    if config["flow"]["input"] == "3d":
        return res("survey/cubes.h5") if split == "survey" else res(f"cubes/{split}.h5")
    return res(f"flow/images/{split}.h5")


def flow_joint_pdf():
    """The flow's test-split calibration (rule flow_calibrate) when
    calibration.recalibrate_flow is set, else no input."""
    return res("flow/joint_pdf.h5") if config["calibration"]["recalibrate_flow"] else []


def set_joint_pdf(wildcards):
    """The set estimator's test-split calibration of the same seed (rule set_calibrate)
    when calibration.recalibrate_sets is set, else no input."""
    if not config["calibration"]["recalibrate_sets"]:
        return []
    return res(f"sets/{wildcards.get('seeddir', '')}joint_pdf.h5")


def set_record_inputs(wildcards):
    """The set estimator's model and calibration by input name, for the rules that record
    or read them (resolved_config, misspecification); none with sets.enabled: false."""
    if not config["sets"]["enabled"]:
        return {}
    return {"set_model": res("sets/model/flow.pt"), "set_meta": res("sets/model/flow.json"),
            **({"set_joint_pdf": set_joint_pdf(wildcards)}
               if config["calibration"]["recalibrate_sets"] else {})}


def set_products():
    """The set estimator's products (rules set_*): model, eval metrics and posteriors, the
    seed summary, survey posteriors, figures; none with sets.enabled: false."""
    if not config["sets"]["enabled"]:
        return []
    return [res("sets/model/flow.pt"), res("sets/metrics.json"), res("sets/posteriors.h5"),
            res("sets/seeds.json"), res("sets/survey_posteriors.ecsv"),
            res("sets/survey_posteriors.csv"), res("figures/sets_loss.png"),
            res("figures/sets_predictions.png"), res("figures/sets_calibration.png")]


#: The companion runs another run reads (compare.KEY): the overlay key that makes it from
#: this run's config files, and the target of that run holding what is read.
COMPANIONS = {"pure_run": ("pure_overlay", "comparison_inputs"),
              "fiducial_run": ("fiducial_overlay", "fiducial_inputs")}


def companion_overlay(key):
    """The overlay config (compare.pure_overlay / fiducial_overlay) with which this run
    builds the companion run compare.{key} itself (rule companion_run), or None when that
    run is null or has no overlay (then it must be finished beforehand)."""
    run = config["compare"].get(key)
    overlay = config["compare"].get(COMPANIONS[key][0])
    if not run or not overlay:
        return None
    if not Path(overlay).is_file():
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(
            f"compare.{COMPANIONS[key][0]}: {overlay!r} does not exist (it makes the run "
            f"compare.{key} = {run} from this config). Fix: give the overlay's path relative "
            f"to the working directory (e.g. configs/{'pure' if key == 'pure_run' else 'fiducial'}.yaml), "
            f"or null to read a finished run {run}")
    return overlay


def other_run_inputs(key, products, fix):
    """What a rule reading products of another run (config key ``compare.{key}``) takes as
    input: none when that run is null; with its overlay (compare.pure_overlay /
    fiducial_overlay) the record of rule companion_run, which builds that run inside this
    one; else the products themselves (``products``: input name -> path inside
    results/{run}/), a missing one stopping the run before any job with ``fix`` (the
    command that makes it). The rule reads the products at other_run_paths."""
    from snakemake.exceptions import WorkflowError

    run = config["compare"].get(key)
    if not run:
        return {}
    if companion_overlay(key):
        return {f"{key}_record": res(f"companions/{run}.json")}
    inputs = other_run_paths(key, products)
    missing = [p for p in inputs.values() if not Path(p).exists()]
    if missing:
        raise WorkflowError(
            f"compare.{key} is '{run}' but that run is not finished (missing: "
            f"{', '.join(missing)}). Fix: {fix.format(run=run)}")
    return inputs


def other_run_paths(key, products):
    """The products of the run compare.{key} by input name (``products``: name -> path
    inside results/{run}/), or none when it is null (a rule's params)."""
    run = config["compare"].get(key)
    return {k: f"results/{run}/{p}" for k, p in products.items()} if run else {}


def companion_products(key):
    """The paths of what this run reads from the companion run compare.{key} (rule
    companion_run records their digests)."""
    if key == "pure_run":
        return list(other_run_paths(key, pure_products()).values())
    names = dict.fromkeys(COMPARE_FIDUCIAL + misspecification_fiducial())
    return list(other_run_paths(key, {k: FIDUCIAL_PRODUCTS[k] for k in names}).values())


def companion_names():
    """The companion runs this run builds itself, as a wildcard pattern."""
    import re

    names = [re.escape(config["compare"][k]) for k in COMPANIONS if companion_overlay(k)]
    return "|".join(names) or "(?!)"


def companion_key(run):
    """The config key (pure_run, fiducial_run) naming the companion run ``run``."""
    return next(k for k in COMPANIONS if config["compare"].get(k) == run)


def companion_trigger(key):
    """The config as the companion run's rerun trigger: without the sections that shape no
    product it makes (this run's own analyses and comparison, the survey's mass function),
    so that changing those reruns no companion (and nothing that reads it)."""
    own = ("ablation", "robustness", "saliency", "compare")
    out = {k: v for k, v in without_speed_keys(config).items() if k not in own}
    out["survey"] = {k: v for k, v in out["survey"].items() if k != "mass_function"}
    return {"config": out, "overlay": Path(companion_overlay(key)).read_text()}


def companion_command(key):
    """The arguments of the Snakemake command that builds the companion run compare.{key} (without --cores):
    this run's Snakefile, config files, --config values and software deployment (--sdm),
    its overlay and its run name, and no lock of its own (this run's lock covers it, as the
    companion is one of this run's jobs). Paths are spelt one way (_config_files), so
    `make run` and a plain `snakemake` give the same command. The job runs them with its
    own Python's Snakemake (envs/companion.yaml with --sdm conda)."""
    import json

    run = config["compare"][key]
    values = [f"{k}={json.dumps(v)}" for k, v in workflow.config_settings.config.items()
              if k != "run"] + [f"run={run}"]
    sdm = [m.name.lower() for m in workflow.deployment_settings.deployment_method]
    return [COMPANIONS[key][1], "--nolock", "--ignore-incomplete",
            "--snakefile", *stable_paths([workflow.main_snakefile]),
            *(["--sdm", *sdm] if sdm else []),
            "--configfile", *_config_files(), companion_overlay(key), "--config", *values]


def companion_threads():
    """Cores of a companion run's job: half the run's, so that it and this run's own jobs
    share the machine (1 on 2 cores)."""
    try:
        return max(1, int(workflow.cores) // 2)
    except Exception:                        # no --cores (lint, dry runs): any value
        return 1


def compare_inputs(wildcards):
    """This run's metrics and, with compare.pure_run / compare.fiducial_run, the finished
    pure and fiducial-model runs'; a missing run stops the run with the command that makes
    it."""
    inputs = {"metrics": res("evaluation/metrics.json"),
              "flow_metrics": res("flow/metrics.json"), **cube_only_metrics()}
    if config["sets"]["enabled"]:
        inputs.update(set_metrics=res("sets/metrics.json"), set_seeds=res("sets/seeds.json"))
    inputs.update(other_run_inputs("pure_run", pure_products(),
        "run the pure catalogue first, e.g. `snakemake --cores 2 --configfile "
        "configs/pure.yaml` (run: {run}, mock.members: bound; `make run` does both), or set "
        "compare.pure_run: null in the config (or an overlay) to compare this catalogue "
        "only."))
    inputs.update(fiducial_run_inputs(COMPARE_FIDUCIAL))
    return inputs


def compare_other_runs():
    """The pure and fiducial-model runs' products the compare rule reads (its params)."""
    return {**other_run_paths("pure_run", pure_products()),
            **other_run_paths("fiducial_run",
                              {k: FIDUCIAL_PRODUCTS[k] for k in COMPARE_FIDUCIAL})}


def pure_products():
    """The pure-catalogue run's products another run reads, by input name."""
    return {**PURE_PRODUCTS,
            **({"pure_set_metrics": PURE_SET_METRICS} if config["sets"]["enabled"] else {})}


def fiducial_run_inputs(names):
    """The inputs of a rule reading the fiducial-model run's products (compare.fiducial_run)
    ``names`` (FIDUCIAL_PRODUCTS; other_run_inputs), or none when it is null."""
    return other_run_inputs("fiducial_run", {k: FIDUCIAL_PRODUCTS[k] for k in names},
        "run the fiducial model first, e.g. `snakemake fiducial_inputs --cores 2 "
        "--configfile config.yaml configs/fiducial.yaml` (run: {run}, nuisance.sample: "
        "false; `make run` does both), or set compare.fiducial_run: null to evaluate this "
        "run's model only.")


def misspecification_fiducial():
    """The fiducial-model run's products the misspecification rule reads, by input name."""
    return [*MISSPECIFICATION_FIDUCIAL,
            *(["fiducial_flow_joint_pdf"] if config["calibration"]["recalibrate_flow"]
              else [])]


def misspecification_params():
    """The misspecification rules' params (their rerun triggers): the config sections the
    matrix's variants and estimators depend on, and the fiducial run's product paths."""
    return dict(robustness=product_params("robustness"), nuisance=config["nuisance"],
                mock=product_params("mock"), kde=product_params("kde"),
                calibration=config["calibration"], flow=product_params("flow"),
                sets=product_params("sets"),
                fiducial=other_run_paths("fiducial_run", {k: FIDUCIAL_PRODUCTS[k]
                                                          for k in misspecification_fiducial()}))


COMPARE_FIDUCIAL = ["fiducial_metrics", "fiducial_flow_metrics", "fiducial_config"]
MISSPECIFICATION_FIDUCIAL = ["fiducial_model", "fiducial_normalisation", "fiducial_joint_pdf",
                             "fiducial_eval", "fiducial_config", "fiducial_flow_model"]


#: The pure-catalogue run's products by input name (rule comparison_inputs makes them), and
#: its set estimator's metrics (with sets.enabled).
PURE_PRODUCTS = {"pure_metrics": "evaluation/metrics.json",
                 "pure_flow_metrics": "flow/metrics.json",
                 "pure_config": "config.resolved.yaml"}
PURE_SET_METRICS = "sets/metrics.json"

#: The fiducial-model run's products by input name (rule fiducial_inputs makes them).
FIDUCIAL_PRODUCTS = {
    "fiducial_model": "model/cnn3d.keras",
    "fiducial_normalisation": "model/normalisation.json",
    "fiducial_joint_pdf": "calibration/joint_pdf.h5",
    "fiducial_eval": "summaries/eval.h5",
    "fiducial_metrics": "evaluation/metrics.json",
    "fiducial_flow_metrics": "flow/metrics.json",
    "fiducial_config": "config.resolved.yaml",
    "fiducial_flow_model": "flow/model/flow.pt",
    "fiducial_flow_joint_pdf": "flow/joint_pdf.h5",
}


def ablation_products():
    """Dimensionality ablation: the table and the figure (paper Figs. 7, 8), and the
    cube-only CNN3D's metrics (ablation.cube_only)."""
    return [res("ablation/summary.json"), res("ablation/scatter.png"),
            *cube_only_metrics().values()]


def robustness_products():
    """The unchanged CNN3D on perturbed eval clusters: summary, predictions, figure; and the
    misspecification matrix (robustness.misspecification)."""
    out = [res("robustness/summary.json"), res("robustness/predictions.h5"),
           res("robustness/robustness.png")]
    if config["robustness"]["misspecification"]:
        out += [res("robustness/misspecification.json"), res("robustness/misspecification.csv"),
                res("robustness/misspecification.png")]
    return out


def saliency_products():
    """Saliency maps of the CNN3D in mass bins and their projections."""
    return [res("saliency/saliency.h5"), res("saliency/summary.json"),
            res("saliency/mean.png"), res("saliency/abs.png")]


def analyses_targets():
    """The analyses switched on in the config (ablation, robustness, saliency .enabled)."""
    out = []
    for name, products in (("ablation", ablation_products),
                           ("robustness", robustness_products),
                           ("saliency", saliency_products)):
        if config[name]["enabled"]:
            out += products()
    return out


def final_targets():
    """Everything `snakemake` builds by default."""
    return [
        res("mock/summary.json"),
        res("figures/mock_mass_function.png"),
        res("figures/mock_split_masses.png"),
        res("figures/mock_phase_space.png"),
        *[res(f"cubes/{s}.h5") for s in SPLITS],
        res("model/cnn3d.keras"),
        res("summaries/test.h5"),
        res("summaries/eval.h5"),
        res("figures/loss_curve.png"),
        res("evaluation/metrics.json"),
        res("evaluation/metrics.csv"),
        res("figures/predictions.png"),
        res("config.resolved.yaml"),
        res("survey/posteriors.ecsv"),
        res("survey/posteriors.csv"),
        res("survey/mass_function.csv"),
        res("survey/pulls.json"),
        res("figures/mass_function.png"),
        res("figures/survey_pulls.png"),
        res("flow/model/flow.pt"),
        res("flow/metrics.json"),
        res("flow/posteriors.h5"),
        res("flow/survey_posteriors.ecsv"),
        res("flow/survey_posteriors.csv"),
        res("figures/flow_loss.png"),
        res("figures/flow_predictions.png"),
        res("figures/flow_calibration.png"),
        *set_products(),
        res("comparison/summary.json"),
        res("comparison/summary.csv"),
        res("figures/comparison.png"),
        *[res(f"report/{t}.html") for t in ("metrics", "comparison", "mass_function",
                                             "posteriors")],
        *analyses_targets(),
    ]


# Seeds (ablation.seeds): seed 0 is the single-run product, ablation/{dim}/ for the CNN1D/2D
# and the main CNN3D (model/, evaluation/metrics.json); seeds k = 1 .. seeds-1 retrain every
# network on the same inputs with another seed, in ablation/{dim}/seeds/{k}/ (the CNN3D on
# cubes/). The {seeddir} wildcard is "" (seed 0) or "seeds/{k}/".


def ablation_params():
    """The ablation section as a rerun trigger, without `seeds` and `cube_only`: how many
    seeds there are, or whether the cube-only CNN3D is trained too, changes no input and no
    other network."""
    return {k: v for k, v in config["ablation"].items() if k not in ("seeds", "cube_only")}


def cube_only_metrics():
    """metrics.json of the CNN3D without the distance input (ablation.cube_only; none when
    the ablation is off or the main CNN3D is cube-only itself, train.distance_input false)."""
    a = config["ablation"]
    if a["enabled"] and a["cube_only"] and config["train"]["distance_input"]:
        return {"cube_only_metrics": res("ablation/3dcube/metrics.json")}
    return {}


def ablation_seed_metrics(dim):
    """metrics.json of network `dim` at seeds 1 .. ablation.seeds - 1 (seed 0 is named on
    its own)."""
    return [res(f"ablation/{dim}/seeds/{k}/metrics.json")
            for k in range(1, config["ablation"]["seeds"])]


def ablation_network_inputs(wildcards, splits):
    """The input files of network {dim}: ablation/{dim}/inputs/ (1d, 2d) or the CNN3D's
    cubes/ (3d: seeds >= 1 only, seed 0 is the main model/; 3dcube: the cube-only CNN3D)."""
    from snakemake.exceptions import WorkflowError

    if wildcards.dim == "3dcube":
        return {s: res(f"cubes/{s}.h5") for s in splits}
    if wildcards.dim != "3d":
        return {s: res(f"ablation/{wildcards.dim}/inputs/{s}.h5") for s in splits}
    if not wildcards.seeddir:
        raise WorkflowError("ablation/3d/ holds the CNN3D's seeds >= 1 only (ablation/3d/"
                            "seeds/{k}/): seed 0 is the main model/cnn3d.keras and "
                            "evaluation/metrics.json (rules train, evaluate)")
    return {s: res(f"cubes/{s}.h5") for s in splits}


def ablation_train_inputs(wildcards):
    return ablation_network_inputs(wildcards, ("train", "validation"))


def ablation_evaluate_inputs(wildcards):
    return dict(ablation_network_inputs(wildcards, ("test", "eval")),
                model=res(f"ablation/{wildcards.dim}/{wildcards.seeddir}model/"
                          f"cnn{wildcards.dim}.keras"),
                clusters=res("mock/clusters.h5"))
