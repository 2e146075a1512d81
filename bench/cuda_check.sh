#!/usr/bin/env bash
# The checks that need a GPU, in one run of a few minutes, each step with its own time limit:
#   1. the test suite with CUDA visible, so every `--device auto` (the command line's default) runs
#      on the GPU, beside `flowgmm demo` (the whole pipeline, EfficientNet-Lite0 included, on CUDA);
#   2. bench/train_speed.py and bench/image_speed.py on CUDA (ratios to the bare matrix algebra);
#   3. a short MNIST run of the image flow on CUDA (bench/mnist.py; MNIST_MINUTES 0 skips it).
# Every log goes to OUTDIR; a failing step does not stop the later ones. Run it from the
# repository root on a machine whose Python ($PYTHON, default python3) has torch with CUDA and the
# project's dependencies; the project itself is put on PYTHONPATH, not installed.
#
#   bench/cuda_check.sh OUTDIR [MNIST_MINUTES (default 3)] [DEMO_SECONDS (default 240)]
set -u
out=${1:?usage: bench/cuda_check.sh OUTDIR [MNIST_MINUTES] [DEMO_SECONDS]}
mnist_minutes=${2:-3}
demo_seconds=${3:-240}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, log to OUTDIR/NAME.log, note rc and seconds
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/steps.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc
    "$py" -c "import sys, torch, numpy, sklearn, transformers, timm, typer, h5py; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'numpy', numpy.__version__, 'sklearn', sklearn.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__, 'typer', typer.__version__, 'h5py', h5py.__version__)"
} >"$out/machine.txt" 2>&1

# 1. The suite on 12 workers beside the demo (a user's first command; device auto).
step demo "$demo_seconds" "$py" -m flowgmm_cli demo -o "${TMPDIR:-/tmp}/flowgmm-cuda-demo" &
step pytest 300 "$py" -m pytest -q -n 12 -p no:cacheprovider --timeout 150 --durations=15 -rfE flowgmm_cli extractors tests
wait

# 2. Throughput against the bare algebra, on the GPU alone.
step train_speed 60 "$py" bench/train_speed.py --device cuda --repeats 10 --json
step image_speed 70 "$py" bench/image_speed.py --device cuda --steps 20 --json

# 3. The image flow on MNIST pixels, accuracy against minutes of training.
if [ "$mnist_minutes" -gt 0 ]; then
    step mnist $((mnist_minutes * 60 + 90)) "$py" bench/mnist.py --minutes "$mnist_minutes" --eval-minutes 1 --threads 2 --device cuda --json
fi
