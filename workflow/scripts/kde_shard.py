"""Rule kde_shard: KDE cubes of one shard of one split."""
from cmpipe.stages import kde_shard, run_rule

run_rule(kde_shard, snakemake.log[0], config=snakemake.config,
         clusters=snakemake.input.clusters, split_name=snakemake.wildcards.split,
         shard=snakemake.params.shard, shard_size=snakemake.params.shard_size,
         out=snakemake.output.cubes, threads=snakemake.threads)
