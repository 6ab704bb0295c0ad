"""The ``cmpipe`` command: tasks users need without Snakemake.

    cmpipe check-config CONFIG [OVERLAY ...] [--schema SCHEMA]
                                                   validate a config, print the resolved one
    cmpipe infer --run-dir RUN --clusters C (--galaxies G | --phase-space P) -o OUT
                                                   masses of your clusters from a trained run
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from . import __version__
from .settings import ConfigError, load_config

__all__ = ["main"]

_INFER_DESCRIPTION = """\
Apply a trained cmpipe run (its model, calibration and resolved config) to your own
clusters, without Snakemake: galaxies -> the run's phase-space window -> KDE cubes ->
network prediction d~ -> calibrated posteriors of log10 M200c under two priors.

The run directory is what `snakemake` made under results/{run}/: it must hold
config.resolved.yaml (the window, KDE grid and cosmology the models were trained with,
and the SHA-256 of the models and calibrations) and the chosen estimator's files:

--estimator cnn3d   CNN3D + SBI calibration (rule survey_posteriors -> survey/posteriors):
                    model/cnn3d.keras, model/normalisation.json, calibration/joint_pdf.h5
--estimator flow    the neural flow (rule flow_survey_posteriors -> flow/survey_posteriors):
                    flow/model/flow.pt, flow/model/flow.json and, when the run has
                    calibration.recalibrate_flow (the default), its test-split calibration
                    flow/joint_pdf.h5; else the flow's own posteriors
--estimator sets    the set estimator, Deep Sets flow on the window galaxies (rule
                    set_survey_posteriors -> sets/survey_posteriors): sets/model/flow.pt,
                    sets/model/flow.json and, with calibration.recalibrate_sets (the
                    default), sets/joint_pdf.h5
--estimator all     one table per estimator: OUT with -cnn3d / -flow / -sets inserted
                    before the extension (post.ecsv -> post-cnn3d.ecsv, post-flow.ecsv, ...)
(default)           the run's best-calibrated estimator: of evaluation/metrics.json,
                    flow/metrics.json and sets/metrics.json, the one whose eval coverage of
                    the 68% and 95%
                    intervals is closest to nominal (sum of |coverage - 0.683|, |coverage -
                    0.954|), ties to the smaller scatter_dex.
The table's metadata (ECSV header, FITS header) says which estimator made it and why:
estimator_choice, estimator_reason; the last line on stderr says it too (CSV keeps no
metadata).

Input tables: FITS (.fits, .fit, .fits.gz), CSV (.csv) or ECSV (.ecsv), format from the
extension.

--clusters (always): one row per cluster
  cluster_id   integer, unique (rows are numbered 0..N-1 if there is no id column), or
               names (A2029, Coma; also read from a name column): then the ids are the
               rows 0..N-1 and the output keeps the names as cluster_name
  ra_deg       right ascension of the centre, degrees (ICRS)
  dec_deg      declination of the centre, degrees
  z            cluster redshift (> 0)
  optional: log10_m_cat, log10_m_cat_err (log10 M200c in h^-1 Msun and its error in dex),
  n_mem (member count); they are copied to the output.
  Default names tried: ra_deg/RA/ra/RAdeg, dec_deg/Dec/dec/DEdeg, z/Z/zcl/redshift, ...
  (cmpipe.io.survey.CLUSTER_COLUMNS); map others with --cluster-column KEY=COLUMN.

--galaxies (galaxies on the sky): one row per galaxy
  ra_deg, dec_deg   degrees;  z   spectroscopic redshift (>= 0)
  optional: galaxy_id, cluster_id (membership, used for n_members; the clusters' names
  when --clusters names them), mag_r.
  Every galaxy enters every cluster window it falls in. Map names with
  --galaxy-column KEY=COLUMN.

--phase-space (galaxies already in projected phase space): one row per galaxy
  cluster_id           the cluster (must be in --clusters; its name if they are named)
  x_proj, y_proj       offsets from the centre, proper h^-1 Mpc (east, north)
  v_los                line-of-sight velocity in the cluster frame, km/s
                       (c (z - z_cl) / (1 + z_cl))
  optional: galaxy_id. Rows outside the window are dropped.

Angles: unitless RA/Dec columns are degrees; a table that is clearly in radians is
rejected (--angle-unit deg switches the test off; columns with an astropy unit are
converted). Window and grid come from the run: |x|, |y| <= window.half_width_mpc_h,
|v| <= window.v_max_kms.

Output (-o, .ecsv/.csv/.fits): one row per cluster, sorted by cluster_id:
  cluster_id (cluster_name after it when the clusters are named), ra_deg, dec_deg, z,
  n_gal (galaxies in the window), n_members, n_mem,
  log10_m_cat, log10_m_cat_err, skipped (1: fewer than min_galaxies galaxies, NaN
  posteriors), comoving_distance_mpc_h (from z: the distance-aware calibration is
  sliced there), beyond_mock_depth (1: farther than the mock's observers),
  nearer_than_mock (1: nearer than the nearest observer distance of the calibration's
  test clusters, distance node 0 of calibration/joint_pdf.h5; 0 for a distance-blind
  calibration, which records none),
  log10_m_pred (d~), extrapolated (1: d~ outside the calibrated range),
  outside_calibrated_range (1: posterior median within 0.2 dex of an end of the
  training masses, or beyond: the prior's edge pulls it inward),
  flat_{map,median,mean,sd,lo68,hi68,lo95,hi95}: posterior under the test-set (flat)
      prior, the paper's calibrated posterior,
  pop_{...}: posterior under the Tinker (2008) mass function at the cluster redshift.
  Masses log10(M200c / h^-1 Msun); sd in dex; lo68/hi68 are the 15.87/84.13% and
  lo95/hi95 the 2.5/97.5% quantiles.

Bad input stops with one message naming the file, the column and the fix (exit 1).
"""


def _default_schema() -> Path:
    """The config schema shipped with the package (``cmpipe/data/config.schema.yaml``)."""
    from .sections import CONFIG_SCHEMA
    return CONFIG_SCHEMA


def _mapping(items, flag):
    out = {}
    for item in items or ():
        key, sep, col = item.partition("=")
        if not sep or not key.strip() or not col.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=COLUMN (e.g. {flag} "
                              "ra_deg=RAJ2000)")
        out[key.strip()] = col.strip()
    return out or None


def _positive_int(text):
    """argparse type: an integer >= 1 (``--threads``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1 (give the number of KDE "
                                         "threads, e.g. --threads 4)")
    return value


def _infer_parser(sub):
    p = sub.add_parser("infer", help="masses of your clusters from a trained run",
                       description=_INFER_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True,
                   help="a finished run, e.g. results/demo")
    p.add_argument("--clusters", type=Path, required=True,
                   help="cluster table: cluster_id, ra_deg, dec_deg [deg], z")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--galaxies", type=Path,
                     help="galaxy table on the sky: ra_deg, dec_deg [deg], z")
    src.add_argument("--phase-space", type=Path,
                     help="galaxies in phase space: cluster_id, x_proj, y_proj "
                          "[h^-1 Mpc, proper], v_los [km/s]")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="posterior table to write (.ecsv, .csv or .fits)")
    p.add_argument("--estimator", choices=("cnn3d", "flow", "sets", "all"), default=None,
                   help="cnn3d (CNN3D + SBI), flow (neural flow, recalibrated when the run "
                        "is), sets (Deep Sets flow on the galaxies, likewise), all "
                        "(OUT-cnn3d.EXT, OUT-flow.EXT, OUT-sets.EXT); default: the run's "
                        "best-calibrated one (see above)")
    p.add_argument("--cluster-column", action="append", metavar="KEY=COLUMN",
                   help="map a cmpipe cluster column to a file column (repeatable)")
    p.add_argument("--galaxy-column", action="append", metavar="KEY=COLUMN",
                   help="map a cmpipe galaxy column to a file column (repeatable)")
    p.add_argument("--angle-unit", choices=("auto", "deg"), default="auto",
                   help="unitless RA/Dec are degrees; auto also rejects radians "
                        "(default auto)")
    p.add_argument("--min-galaxies", type=int, default=None,
                   help="skip clusters with fewer window galaxies (default: the run's "
                        "survey.min_galaxies, else mock.min_galaxies)")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="KDE threads, >= 1 (default 1)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="keep cubes.h5 and phase_space.h5 in DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of unexpected errors")
    return p


def _run_infer(args) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        stream=sys.stderr, force=True,
                        format="%(levelname)s %(name)s: %(message)s")
    from .devices import quiet_tensorflow_startup

    quiet_tensorflow_startup()          # before anything imports TensorFlow (as run_rule)
    from .io.tables import CatalogueError

    try:
        if args.min_galaxies is not None and args.min_galaxies < 3:
            raise ConfigError("--min-galaxies must be >= 3 (a 3D KDE needs three galaxies)")
        from .stages.infer import infer
        written = infer(
            run_dir=args.run_dir, clusters=args.clusters, galaxies=args.galaxies,
            phase_space=args.phase_space, out=args.output,
            cluster_columns=_mapping(args.cluster_column, "--cluster-column"),
            galaxy_columns=_mapping(args.galaxy_column, "--galaxy-column"),
            angle_unit=args.angle_unit, min_galaxies=args.min_galaxies,
            threads=args.threads, keep_dir=args.keep, schema=_default_schema(),
            estimator=args.estimator)
    except (CatalogueError, ConfigError, FileNotFoundError, ValueError) as err:
        msg = str(err)
        for key, flag in (("cluster_columns", "--cluster-column"),
                          ("galaxy_columns", "--galaxy-column")):
            if f"survey.{key}" in msg:
                msg += f" (cmpipe infer: {flag} KEY=COLUMN)"
        print(f"cmpipe infer: {msg}", file=sys.stderr)
        return 1
    except Exception as err:  # never a traceback for users; --debug shows it
        if args.debug:
            raise
        print(f"cmpipe infer: unexpected error ({type(err).__name__}: {err}); rerun with "
              "--debug for the traceback", file=sys.stderr)
        return 1
    for name, (path, reason) in written.items():
        print(f"cmpipe infer: wrote {path} (estimator {name}; {reason})", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="cmpipe", description="cmpipe: dynamical galaxy-"
                                 "cluster masses from projected phase space")
    ap.add_argument("--version", action="version", version=f"cmpipe {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    cc = sub.add_parser("check-config", help="validate a config file against the schema "
                        "and print it with defaults filled")
    cc.add_argument("config", type=Path, nargs="+",
                    help="the config, then any overlays (as snakemake --configfile merges "
                         "them), e.g. config.yaml configs/tiny.yaml")
    cc.add_argument("--schema", type=Path, default=None,
                    help="JSON schema (default: the schema installed with cmpipe, "
                         "cmpipe/data/config.schema.yaml)")
    _infer_parser(sub)
    args = ap.parse_args(argv)
    if args.command == "check-config":
        try:
            cfg = load_config(args.config[0], args.schema or _default_schema(),
                              overlays=args.config[1:])
        except (ConfigError, FileNotFoundError) as err:
            print(f"cmpipe: {err}", file=sys.stderr)
            return 1
        yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
        return 0
    if args.command == "infer":
        return _run_infer(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
