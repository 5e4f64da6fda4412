"""On-disk feature shards written per rank during Trainer.predict, and their merge."""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslx.neighbors.storage import atomic_write

MANIFEST_KIND = "sslx.feature_shards"
MANIFEST_VERSION = 1
_MANIFEST = re.compile(r"manifest_rank(\d+)\.json")


@dataclass(frozen=True)
class MergedShards:
    """All shards of a directory: features sorted by dataset id, padding duplicates dropped."""

    features: np.ndarray
    ids: np.ndarray
    layer: str
    fingerprint: str


def shard_stem(rank: int, batch_idx: int, dataloader_idx: int = 0) -> str:
    """Return 'rank{r}_batch{i}' (with '_dl{j}' for extra predict dataloaders)."""
    loader = f"_dl{dataloader_idx}" if dataloader_idx else ""
    return f"rank{rank}{loader}_batch{batch_idx}"


def write_shard(directory: Path, stem: str, features: np.ndarray, ids: np.ndarray) -> dict:
    """Write features_{stem}.npy and ids_{stem}.npy atomically; return the manifest entry."""
    if features.ndim != 2 or ids.shape != (features.shape[0],):
        raise ValueError(f"shard {stem}: features {features.shape} and ids {ids.shape} do not pair up")
    names = {"features": f"features_{stem}.npy", "ids": f"ids_{stem}.npy"}
    for key, array in (("features", features.astype(np.float32, copy=False)), ("ids", ids.astype(np.int64, copy=False))):
        atomic_write(directory / names[key], lambda f, a=array: np.save(f, a, allow_pickle=False))
    return {**names, "count": int(features.shape[0])}


def write_manifest(directory: Path, rank: int, world_size: int, layer: str, fingerprint: str, dim: int | None, shards: list[dict]) -> Path:
    """Write manifest_rank{rank}.json listing this rank's shards (marks the rank as complete)."""
    manifest = {
        "format": MANIFEST_KIND,
        "format_version": MANIFEST_VERSION,
        "rank": rank,
        "world_size": world_size,
        "layer": layer,
        "fingerprint": fingerprint,
        "dim": dim,
        "shards": shards,
    }
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    return atomic_write(directory / f"manifest_rank{rank}.json", lambda f: f.write(text))


def rank_outputs(directory: Path, rank: int) -> list[str]:
    """Return names of files that an earlier run of `rank` left in `directory`."""
    if not directory.is_dir():
        return []
    pattern = re.compile(rf"(features|ids)_rank{rank}_.*\.npy|manifest_rank{rank}\.json")
    return sorted(p.name for p in directory.iterdir() if pattern.fullmatch(p.name))


def read_shards(directory: str | os.PathLike) -> MergedShards:
    """Merge every rank's shards of `directory` into one id-sorted, duplicate-free feature matrix."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"shard directory not found: {directory}")
    manifests = _read_manifests(directory)
    features, ids = [], []
    for manifest in manifests:
        for entry in manifest["shards"]:
            feats, shard_ids = _read_shard(directory, entry, manifest["dim"])
            features.append(feats)
            ids.append(shard_ids)
    if not features:
        raise ValueError(f"the shards in {directory} hold no feature vectors: the reference set was empty")
    all_features, all_ids = np.concatenate(features), np.concatenate(ids)
    order = np.argsort(all_ids, kind="stable")
    all_features, all_ids = all_features[order], all_ids[order]
    first = np.ones(all_ids.shape[0], dtype=bool)
    first[1:] = all_ids[1:] != all_ids[:-1]
    _check_duplicates_agree(all_features, all_ids, first)
    return MergedShards(all_features[first], all_ids[first], manifests[0]["layer"], manifests[0]["fingerprint"])


def _read_manifests(directory: Path) -> list[dict]:
    found = {int(m.group(1)): directory / m.group(0) for p in directory.iterdir() if (m := _MANIFEST.fullmatch(p.name))}
    if not found:
        raise ValueError(
            f"no manifest_rank*.json in {directory}: run Trainer.predict with a ShardWriter to completion first"
        )
    manifests = []
    for rank in sorted(found):
        try:
            manifest = json.loads(found[rank].read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"shard manifest {found[rank]} is unreadable or corrupt ({err})") from err
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_KIND:
            raise ValueError(f"{found[rank]} is not an sslx feature-shard manifest")
        if manifest.get("format_version", 0) > MANIFEST_VERSION:
            raise ValueError(f"{found[rank]} has a newer format version {manifest.get('format_version')}")
        absent = sorted({"rank", "world_size", "layer", "fingerprint", "dim", "shards"} - set(manifest))
        if absent:
            raise ValueError(f"shard manifest {found[rank]} is corrupt: missing {absent}")
        manifests.append(manifest)
    world = {m["world_size"] for m in manifests}
    if len(world) != 1:
        raise ValueError(f"shard manifests in {directory} come from runs with different world sizes {sorted(world)}")
    missing = sorted(set(range(world.pop())) - set(found))
    if missing:
        raise ValueError(f"shards of ranks {missing} are missing from {directory} (no manifest): that run did not finish")
    for key in ("layer", "fingerprint"):
        values = {m[key] for m in manifests}
        if len(values) != 1:
            raise ValueError(f"shard manifests in {directory} disagree on {key}: {sorted(map(str, values))}")
    dims = {m["dim"] for m in manifests} - {None}
    if len(dims) > 1:
        raise ValueError(f"shard manifests in {directory} disagree on the feature dimension: {sorted(dims)}")
    return manifests


def _read_shard(directory: Path, entry: dict, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for key in ("features", "ids"):
        name = entry.get(key)
        if not isinstance(name, str) or Path(name).name != name:
            raise ValueError(f"shard manifest in {directory} is corrupt: bad {key} file name {name!r}")
        path = directory / name
        try:
            arrays.append(np.load(io.BytesIO(path.read_bytes()), allow_pickle=False))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"shard file listed in the manifest is missing: {path}") from err
        except (ValueError, EOFError, OSError) as err:
            raise ValueError(f"shard file {path} is corrupt or truncated ({err})") from err
    features, ids = arrays
    if features.shape != (entry["count"], dim) or ids.shape != (entry["count"],) or ids.dtype != np.int64:
        raise ValueError(
            f"shard {entry['features']} has features {features.shape} / ids {ids.shape} {ids.dtype}, "
            f"expected ({entry['count']}, {dim}) / ({entry['count']},) int64"
        )
    return features, ids


def _check_duplicates_agree(features: np.ndarray, ids: np.ndarray, first: np.ndarray) -> None:
    dup = np.flatnonzero(~first)
    if dup.size == 0:
        return
    kept = np.flatnonzero(first)[np.searchsorted(ids[first], ids[dup])]
    if not np.allclose(features[dup], features[kept], rtol=1e-3, atol=1e-4):
        raise ValueError("a dataset id appears in several shards with different features: shards of different runs are mixed")
