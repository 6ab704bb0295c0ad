"""Cube files: writer/reader round trip, shard gathering, atomicity, bad files."""
import h5py
import numpy as np
import pytest

from cmpipe.io.cubes import CUBE_COLUMNS, CubeReader, CubeWriter, cube_digest, gather_shards
from cmpipe.io.tables import CatalogueError

N = 12


def _write(path, cubes, start_id):
    b = len(cubes)
    cols = dict(cluster_id=np.arange(start_id, start_id + b),
                log10_m200c=np.linspace(13.7, 15.0, b), n_gal=np.arange(b) + 10,
                n_members=np.arange(b) + 5, distance_mpc_h=np.linspace(20.0, 240.0, b))
    with CubeWriter(path, b, N, dict(n_grid=N, split="test", h0=0.175)) as w:
        for i in range(0, b, 4):
            w.write(cubes[i:i + 4], {k: v[i:i + 4] for k, v in cols.items()})
    return cols


def test_round_trip_and_chunking(tmp_path):
    rng = np.random.default_rng(0)
    cubes = rng.random((10, N, N, N)).astype(np.float32)
    cols = _write(tmp_path / "a.h5", cubes, 100)
    with CubeReader(tmp_path / "a.h5") as r:
        assert len(r) == 10 and r.shape == (10, N, N, N)
        np.testing.assert_array_equal(r.cubes(3, 7), cubes[3:7])
        np.testing.assert_array_equal(r.take([9, 0, 4]), cubes[[9, 0, 4]])
        for k in CUBE_COLUMNS:
            np.testing.assert_array_equal(r.column(k), cols[k])
        assert r.attrs["split"] == "test"
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["cubes"].chunks == (1, N, N, N)
        assert f["cubes"].compression == "gzip"


def test_gather_copies_chunks_bit_for_bit(tmp_path):
    rng = np.random.default_rng(1)
    parts = [rng.random((n, N, N, N)).astype(np.float32) for n in (5, 0, 7)]
    paths = []
    start = 0
    for i, c in enumerate(parts):
        p = tmp_path / f"shard-{i}.h5"
        _write(p, c, start)
        start += len(c)
        paths.append(p)
    gather_shards(paths, tmp_path / "all.h5")
    with CubeReader(tmp_path / "all.h5") as r:
        np.testing.assert_array_equal(r.cubes(0, len(r)), np.concatenate(parts))
        np.testing.assert_array_equal(r.column("cluster_id"), np.arange(12))


def test_content_digest_follows_content_not_sharding(tmp_path):
    """The digest a model records: the same for one file or gathered shards of the same
    cubes, different when one voxel or one mass changes; older files are hashed on read."""
    rng = np.random.default_rng(2)
    cubes = rng.random((9, N, N, N)).astype(np.float32)
    cols = dict(cluster_id=np.arange(9), log10_m200c=rng.uniform(13.7, 15.0, 9),
                n_gal=np.arange(9) + 10, n_members=np.arange(9) + 5,
                distance_mpc_h=np.linspace(20.0, 240.0, 9))

    def write(path, sl, **change):
        c = {k: v[sl].copy() for k, v in cols.items()}
        for k, (i, v) in change.items():
            c[k][i] = v
        with CubeWriter(path, len(cubes[sl]), N, dict(n_grid=N)) as w:
            w.write(cubes[sl], c)

    write(tmp_path / "one.h5", slice(None))
    write(tmp_path / "s0.h5", slice(0, 4))
    write(tmp_path / "s1.h5", slice(4, 9))
    gather_shards([tmp_path / "s0.h5", tmp_path / "s1.h5"], tmp_path / "gathered.h5")
    d_one = cube_digest(tmp_path / "one.h5")
    assert len(d_one) == 64 and d_one == cube_digest(tmp_path / "gathered.h5")
    # an independent reference: per-cube SHA-256 of the float32 bytes, as stored
    import hashlib
    with h5py.File(tmp_path / "gathered.h5") as f:
        for i in (0, 5, 8):
            assert bytes(f["cube_sha256"][i]) == hashlib.sha256(cubes[i].tobytes()).digest()
    write(tmp_path / "bumped.h5", slice(None))
    with h5py.File(tmp_path / "bumped.h5", "r+") as f:   # one voxel one ulp up
        f["cubes"][3, 1, 2, 3] = np.nextafter(cubes[3, 1, 2, 3], np.float32(2))
        del f["cube_sha256"], f.attrs["content_digest"]  # as a file without a digest
    assert cube_digest(tmp_path / "bumped.h5") != d_one
    write(tmp_path / "mass.h5", slice(None))             # same cubes, one mass changed
    with h5py.File(tmp_path / "mass.h5", "r+") as f:
        f["log10_m200c"][0] = cols["log10_m200c"][0] + 0.1
        del f.attrs["content_digest"]                 # as a file without a digest
    assert cube_digest(tmp_path / "mass.h5") != d_one
    with h5py.File(tmp_path / "mass.h5", "r+") as f:  # the fallback hashes the same way
        f["log10_m200c"][0] = cols["log10_m200c"][0]
        del f["cube_sha256"]
    assert cube_digest(tmp_path / "mass.h5") == d_one
    # the networks' distance input is part of the content too
    write(tmp_path / "dist.h5", slice(None), distance_mpc_h=(2, 99.0))
    assert cube_digest(tmp_path / "dist.h5") != d_one
    with h5py.File(tmp_path / "dist.h5", "r+") as f:  # a file from before the column
        del f["distance_mpc_h"]
    with pytest.raises(CatalogueError, match="distance_mpc_h.*rerun the kde rules"):
        CubeReader(tmp_path / "dist.h5")


def test_failed_write_leaves_no_file(tmp_path):
    cubes = np.zeros((4, N, N, N), np.float32)
    with pytest.raises(RuntimeError, match="wrote 2 of 4"):
        with CubeWriter(tmp_path / "b.h5", 4, N, {}) as w:
            w.write(cubes[:2], dict(cluster_id=[0, 1], log10_m200c=[14, 14], n_gal=[3, 3],
                                    n_members=[3, 3], distance_mpc_h=[100.0, 200.0]))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ZeroDivisionError):
        with CubeWriter(tmp_path / "c.h5", 4, N, {}):
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_bad_cube_files_are_named(tmp_path):
    with pytest.raises(CatalogueError, match="does not exist"):
        CubeReader(tmp_path / "missing.h5")
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(CatalogueError, match="corrupt.h5.*not a readable HDF5"):
        CubeReader(bad)
    with h5py.File(tmp_path / "nocol.h5", "w") as f:
        f["cubes"] = np.zeros((1, N, N, N), np.float32)
    with pytest.raises(CatalogueError, match="nocol.h5: field 'cluster_id'"):
        CubeReader(tmp_path / "nocol.h5")
