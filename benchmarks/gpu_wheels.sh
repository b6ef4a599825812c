#!/usr/bin/env bash
# The versions are the ones this project's tests run with here.
# Download exactly the wheels benchmarks/gpu_check.py needs on the GPU machine (Python 3.12,
# manylinux x86_64) that its preinstalled set (torch 2.11, torchvision 0.26, transformers 5.17,
# accelerate, scikit-image, scipy, typer, tqdm, safetensors, numpy, pillow, pyyaml and their
# dependencies) lacks, into benchmarks/wheels/ (git-ignored), and print the total size.
#
# The list is what the check imports minus that set's dependency closure (computed from package
# metadata; see benchmarks/README.md, "GPU check"):
#   hy3dgen (installed with --no-deps there: its declared gradio/rembg/onnxruntime/pymeshlab are
#   not used by the check; pymeshlab is replaced by a placeholder, vlm3d_ttg.models.allow_missing_pymeshlab),
#   diffusers and einops (hy3dgen's pipeline/blocks), opencv-python-headless (hy3dgen's image
#   preprocessor imports cv2; the headless build is the small one), trimesh (meshes),
#   requests + urllib3 + idna + certifi + charset-normalizer (diffusers imports requests),
#   diffrp-nvdiffrast (the CUDA renderer; JIT-compiled on first use by the check) and ninja (torch's
#   extension builder needs the ninja binary for that compile; it lands in <target>/bin).
# opencv-python-headless is pinned to 4.11 (50 MB) rather than 5.0 (61 MB) to fit the size limit;
# hy3dgen only calls cv2.resize/imread/cvtColor, which did not change.
# vlm3d_ttg itself is not a wheel: the check runs from the working tree (PYTHONPATH=.).
set -euo pipefail
cd "$(dirname "$0")"
DEST=wheels
mkdir -p "$DEST"
PIP="${PIP:-python3 -m pip}"
PACKAGES=(
  "hy3dgen==2.0.2"
  "diffusers==0.42.1"
  "einops==0.8.2"
  "opencv-python-headless==4.11.0.86"
  "trimesh==5.2.0"
  "requests==2.34.2"
  "urllib3==2.8.0"
  "idna==3.20"
  "certifi==2026.10.19.post1"
  "charset-normalizer==3.5.3"
  "diffrp-nvdiffrast==0.3.3.1"
  "ninja==1.13.0"
)
$PIP download --quiet --no-deps --dest "$DEST" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  --only-binary=:all: "${PACKAGES[@]}"
ls -l "$DEST"
TOTAL=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $(( TOTAL / 1024 / 1024 )) MiB ($TOTAL bytes) in $(ls "$DEST"/*.whl | wc -l) wheels"
if (( TOTAL > 60 * 1024 * 1024 )); then
  echo "over the ~60 MiB limit" >&2
  exit 1
fi
