"""The distribution: the built wheel installs one top-level package, `memscore` (the repository's engine/ and
kernels/ map under it), and that installed copy scores a dataset from outside the repository."""
from __future__ import annotations

import json
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    target, site_packages, work = sys.argv[1:4]
    sys.path[:0] = [target]
    sys.path.extend(site_packages.split("|"))
    import numpy as np
    from PIL import Image
    import memscore
    from memscore.synthetic import write_aligned_dataset
    data = write_aligned_dataset(Path(work) / "data", 6, size=32)
    recon = Path(work) / "recon"
    for path in sorted(data.rglob("*.png")):
        photo = np.asarray(Image.open(path))[:, :32]  # the target half, slightly changed: the victim's output
        out = recon / path.relative_to(data)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((photo // 2 + 60).astype(np.uint8)).save(out)
    config = memscore.ScoreConfig(victim=f"recon:{recon}")
    summary = memscore.score(memscore.DatasetSpec(str(data)), config, Path(work) / "s.zarr", progress=False)
    store = memscore.open_store(Path(work) / "s.zarr")
    print(json.dumps({"file": memscore.__file__, "kernels": memscore.kernels.difficulty.__file__,
                      "scored": summary.scored, "ok": store.counts().ok,
                      "lrec_finite": bool(np.isfinite(store.column("lrec")).all()),
                      "engine_importable": __import__("importlib.util").util.find_spec("engine") is not None}))
""")


def test_the_wheel_installs_only_memscore_and_it_scores_from_outside_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("memscore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"memscore", wheel.name.split("-py")[0] + ".dist-info"}
    assert "memscore/kernels/difficulty.py" in names and "memscore/victims/pix2pix.py" in names
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt").decode()
    assert "memscore = memscore.cli:main" in entry_points

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(target), str(wheel)], check=True, cwd=tmp_path)
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed == {"bin", "memscore"}  # the package and the `memscore` command; nothing named engine or kernels

    work = tmp_path / "work"
    work.mkdir()
    # -S: no site processing, so the repository's editable install (a .pth finder) is not seen; the dependencies
    # come from this environment's site-packages, memscore from the installed wheel alone
    result = subprocess.run([sys.executable, "-S", "-c", SCRIPT, str(target), "|".join(site.getsitepackages()),
                             str(work)], cwd=work, capture_output=True, text=True, check=True)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(target)) and found["kernels"].startswith(str(target))
    assert found["scored"] == 6 and found["ok"] == 6 and found["lrec_finite"]
    assert not found["engine_importable"]
