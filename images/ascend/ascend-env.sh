# CANN's environment for every process of the Ascend lab images: the CANN images' own ENTRYPOINT and
# .bashrc source these three scripts (Ascend/cann-container-image, cann/9.0.0-910b-ubuntu22.04-py3.11/
# Dockerfile). Sourced by /usr/local/bin/ascend-env (the images' entrypoint), by BASH_ENV
# (non-interactive bash), /etc/profile.d (login shells) and /etc/bash.bashrc (interactive shells).
# CANN's scripts are bash; other shells keep the image's ENV, which already holds the toolkit paths.
if [ -n "${BASH_VERSION:-}" ] && [ -z "${LABS_ASCEND_ENV:-}" ]; then
  export LABS_ASCEND_ENV=1
  for labs_env in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann-*/share/info/ascendnpu-ir/bin/set_env.sh; do
    # shellcheck disable=SC1090
    [ -f "$labs_env" ] && . "$labs_env"
  done
  # NNAL/ATB: --cxx_abi=1 (torch >= 2.7 wheels use the C++11 ABI) spares its script a `python -c "import torch"`.
  # shellcheck disable=SC1091
  [ -f /usr/local/Ascend/nnal/atb/set_env.sh ] && . /usr/local/Ascend/nnal/atb/set_env.sh --cxx_abi=1
  # aarch64: importing torch_npu can fail with "libgomp.so.1: cannot allocate memory in static TLS
  # block" (Ascend/pytorch#7); preloading the system libgomp is the known way out (PaddleOCR-NPU#7).
  if [ "$(uname -m)" = aarch64 ] && [ -f /usr/lib/aarch64-linux-gnu/libgomp.so.1 ]; then
    case ":${LD_PRELOAD:-}:" in
      *libgomp.so.1*) ;;
      *) export LD_PRELOAD="/usr/lib/aarch64-linux-gnu/libgomp.so.1${LD_PRELOAD:+:$LD_PRELOAD}" ;;
    esac
  fi
  unset labs_env
fi
