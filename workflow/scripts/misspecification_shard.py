"""Rule misspecification_shard: the unchanged CNN3D + calibration, flow and set estimator on
every n-th variant universe's eval set."""
from cmpipe.stages import misspecification_shard, run_rule

run_rule(misspecification_shard, snakemake.log[0], config=snakemake.config,
         model=snakemake.input.model, normalisation=snakemake.input.normalisation,
         joint_pdf=snakemake.input.joint_pdf, projected=snakemake.input.projected,
         clusters=snakemake.input.clusters, eval_predictions=snakemake.input.eval,
         flow=dict(model=snakemake.input.flow_model,
                   joint_pdf=snakemake.input.get("flow_joint_pdf") or None),
         sets=dict(model=snakemake.input.get("set_model") or None,
                   joint_pdf=snakemake.input.get("set_joint_pdf") or None),
         fiducial={k[len("fiducial_"):]: v for k, v in snakemake.params.fiducial.items()}
         or None,
         out=snakemake.output.rows, shard=snakemake.params.shard,
         n_shards=snakemake.params.n_shards, threads=snakemake.threads)
