"""Score stores with known contents for the readers' tests (attack, report, cli), written through the store's
own API: Lrec grows with Ldiff and members sit lower, so the attack works on them; and the shadow columns
`memscore score --shadows` adds, for the LiRA and RMIA tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from memscore.config import ScoreConfig
from memscore.lmem import alpha_pass
from memscore.shadows import membership_plan
from memscore.store import ScoreStore


def synthetic_store(path: Path, n: int = 60, shard_size: int = 25, *, labelled: bool = True,
                    failed: tuple[int, ...] = (), pending_shards: tuple[int, ...] = (), alpha: str | None = "fit",
                    seed: int = 1, features: int = 0, feature_shift: float = 0.0) -> ScoreStore:
    """A store of `n` rows with ids "0".."n-1"; rows in `failed` failed; shards in `pending_shards` never
    written (an interrupted run); `alpha` None: no alpha pass (as an interrupted run leaves it). `features` > 0:
    a `features` column that width, whose first value sets the spread of a non-member's Lrec (so a per-image
    model of it beats one global threshold); they are independent of membership unless `feature_shift`, which
    is added to every feature of a member (members and non-members then differ as images)."""
    rng = np.random.default_rng(seed)
    member = (rng.random(n) < 0.55).astype(np.int8)
    ldiff = rng.uniform(0.05, 0.30, n)
    lrec = 0.02 + 3.0 * ldiff + rng.normal(0, 0.04, n) - 0.1 * member
    feature_values = rng.normal(0, 1, (n, max(features, 1))).astype(np.float16)
    if features:
        spread = np.exp(feature_values[:, 0].astype(np.float64))  # images whose non-member Lrec varies more
        lrec = 0.5 + 3.0 * ldiff + 0.02 * spread * rng.normal(0, 1, n) - 0.03 * member
        feature_values += np.float16(feature_shift) * member[:, None].astype(np.float16)
    status = np.array(["ok"] * n, dtype=object)
    status[list(failed)] = "failed"
    lrec[list(failed)] = ldiff[list(failed)] = np.nan
    store = ScoreStore.create(path, n, shard_size, ScoreConfig(victim="recon:synthetic", alpha=alpha or "fit"),
                              extra_columns={"features": features} if features else None)
    for index in range(store.n_shards):
        if index in pending_shards:
            continue
        rows = slice(*store.shard_range(index))
        size = rows.stop - rows.start
        store.write_shard(index, {
            "id": [str(i) for i in range(rows.start, rows.stop)], "lrec": lrec[rows], "ldiff": ldiff[rows],
            "status": list(status[rows]), "reason": ["broken file" if s == "failed" else "" for s in status[rows]],
            "member": member[rows] if labelled else np.full(size, -1, np.int8),
            "out_height": np.full(size, 32, np.int32), "out_width": np.full(size, 32, np.int32),
            "out_of_range": np.zeros(size, np.float32),
            **({"features": feature_values[rows]} if features else {})})
    if alpha is not None:
        alpha_pass(store, alpha)
    return ScoreStore.open(path, mode="r")


def store_with_shadow_columns(path: Path, n: int = 80, k: int = 4, seed: int = 0
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A finished synthetic store plus `lrec_shadow` / `in_shadow` arrays written directly (the scorer's
    columns, as `memscore score --shadows` writes them): a shadow's Lrec of an image follows the image's
    difficulty (from its Ldiff), lower where the shadow trained on it. Returns (lrec, lrec_shadow, in_shadow)."""
    store = synthetic_store(path, n=n, shard_size=25)
    ids, plan = membership_plan([str(i) for i in range(n)], k, seed)
    in_shadow = np.array([plan[ids.index(str(i))] for i in range(n)], dtype=np.int8)  # store rows are "0".."n-1"
    noise = np.random.default_rng(seed).standard_normal((n, k))
    difficulty = 0.02 + 3.0 * store.column("ldiff")[:, None]
    lrec_shadow = (difficulty + 0.04 * noise - 0.1 * in_shadow).astype(np.float32)
    group = zarr.open_group(str(path), mode="a")
    for name, values in (("lrec_shadow", lrec_shadow), ("in_shadow", in_shadow)):
        group.create_array(name, shape=values.shape, chunks=(25, k), dtype=values.dtype, fill_value=0,
                           dimension_names=["image", "shadow"])[:] = values
    return store.column("lrec"), lrec_shadow, in_shadow
