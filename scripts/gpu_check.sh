#!/usr/bin/env bash
# The GPU check: runs the tests and the benchmark on a GPU machine without internet, in one call of at most ~10
# minutes. Correctness on CUDA first, then the measurements the performance targets (docs/performance.md) need, in
# priority order, each stage under its own time limit and all under one deadline, so the call returns inside its
# limit with whatever stages fit (a skipped stage says so in summary.txt). Every benchmark writes its tables after
# each finished run (and on the SIGTERM of a time limit), and the tarball is re-packed after every stage, so a stage
# cut short still returns what it measured.
#
#   1 tests      tests/test_cuda.py and the loader/augmentation no-sync tests (not the NCCL one: stage 8)
#   2 cli        `python -m dlb.train` on CUDA with the default speed settings and with trainer.faithful=true: a
#                SIGTERM mid-run, the same command again, and the result of a run never stopped (tests/test_cuda.py)
#   3 fast       resnet32 b64, bf16 + channels_last + CUDA graphs: CE and DLB, one CIFAR-sized epoch timed (781 full
#                batches of 64: 49984 images, so the 16-image last batch's second graph is not compiled inside the
#                timed loop), DLB vs the PIL path (paired), eval img/s -> pipeline efficiency, DLB vs CE (separate
#                runs), the 240-epoch extrapolation, >= 3x PIL
#   4 fp32       the default (official numerics, eager) configuration with CE, DLB and DLB split: paired ratios vs CE,
#                the memory target (tensor measure, eager only), throughput.json (dlb.sweep's training-time estimate)
#   5 claims     claim 1's resnet20 cell of the CPU-scale experiment (Fashion-MNIST, CE vs DLB, seeds 0-4) through
#                `python -m dlb.sweep --run` on CUDA with trainer.faithful=true (10 jobs on the GPU's slots), and
#                `python -m dlb.report` of those runs (needs Fashion-MNIST's idx files in data/fashion-mnist)
#   6 jobs       1, 2 and 4 DLB runs sharing the GPU: total img/s (trainer.jobs_per_gpu)
#   7 speed      the speed switches alone against the plain baseline (DLB), CUDA-only ones first
#   8 nccl       the one-GPU torchrun/NCCL DDP test
#
# Here, once:  make gpu-wheels        (the Hydra wheels the GPU image lacks, into .whl/, and Fashion-MNIST's idx
#                                     files into data/fashion-mnist when this machine has them)
# On the GPU:  DLB_GIT_COMMIT=<git rev-parse HEAD here> bash scripts/gpu_check.sh
#              (copy the working tree, .whl/ and data/fashion-mnist there; a copy without .git takes the commit
#              from DLB_GIT_COMMIT). GPU_CHECK_STAGES="fast fp32" runs only those stages (default: all, in order).
# Check it:    GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh   (toy sizes on this machine's CPU)
#
# Output: $OUT (default results/bench/gpu_check) gets summary.txt and gpu_check.tar.gz (every stage's log and
# table); unpack the tarball into results/bench/ and commit the tables.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/bench/gpu_check}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
SMOKE=${GPU_CHECK_SMOKE:-0}
STAGES=" ${GPU_CHECK_STAGES:-tests cli fast fp32 claims jobs speed nccl} "
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/dlb-inductor-cache}  # later processes reuse kernels
deadline=$(( $(date +%s) + BUDGET_S ))
work=$(mktemp -d)
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }

if ! $PY -c "import hydra, omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dlb-site .whl/*.whl \
      && export PYTHONPATH=/tmp/dlb-site${PYTHONPATH:+:$PYTHONPATH}
  else
    say "gpu_check: hydra/omegaconf missing and no .whl/ (run 'make gpu-wheels' here and carry .whl)"; exit 2
  fi
fi
say "gpu_check: $(date -u +%FT%TZ), python $($PY -c 'import sys; print(sys.version.split()[0])'), $($PY -c 'import torch; print("torch", torch.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))'), code $(git rev-parse --short HEAD 2>/dev/null || echo "${DLB_GIT_COMMIT:-unknown}"), budget ${BUDGET_S}s, smoke $SMOKE"
command -v nvidia-smi >/dev/null && nvidia-smi > "$work/nvidia-smi.txt" 2>&1

if [ "$SMOKE" = 1 ]; then  # toy sizes on the CPU: every stage's plumbing, no meaningful number
  DEV=cpu; FAST="--backbone resnet8"; SIZE="--batch-size 16 --steps 2 --warmup 1 --repeats 1 --train-size 128 --test-size 64 --pil-workers 0"
  EPOCH="--steps 2 --train-size 128"; JOBS=1,2; TESTS=(tests/test_cuda.py -k "no_host_sync and not nccl")
  CLAIMS="trainer.device=cpu trainer.epochs=1 dataset.train_subset=256 dataset.test_subset=256 seed=0,1"
  NCCL=(tests/test_cuda.py -k nccl); SPEED=(--variants fused,split)
  export DLB_CUDA_TESTS_ON_CPU=1
else
  DEV=cuda; FAST="--precision bf16 --channels-last --compile reduce-overhead"; SIZE="--steps 300 --repeats 1 --pil-workers 16"
  EPOCH="--steps 781 --train-size 49984"; JOBS=1,2,4
  TESTS=(tests/test_cuda.py tests/test_loader.py tests/test_augment.py -k "(cuda or sync or graphs) and not nccl")
  CLAIMS="trainer.device=slot launcher=gpus hydra.launcher.n_jobs=10 trainer.jobs_per_gpu=10"
  NCCL=(tests/test_cuda.py -k nccl); SPEED=(--variants "bf16,reduce-overhead,all,fused,channels_last,split,compile")
fi
PYTEST=($PY -m pytest -q -rs -p no:cacheprovider)
PYTEST_CLI=("${PYTEST[@]}")  # its tests start training processes: minutes, not seconds
$PY -c "import pytest_timeout" 2>/dev/null && { PYTEST+=(--timeout 60); PYTEST_CLI+=(--timeout 140); }
B="$PY scripts/benchmark.py --device $DEV"

# stage NAME LIMIT_S MIN_S CMD...: runs CMD under min(LIMIT_S, time left); skipped when less than MIN_S is left or
# when GPU_CHECK_STAGES does not name it.
stage() {
  local name=$1 limit=$2 min=$3; shift 3
  [[ "$STAGES" == *" $name "* ]] || return 0
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt "$min" ]; then say "$name: SKIPPED (${left}s left, needs ${min}s)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$work/$name.log" 2>&1
  local rc=$?
  say "$name: rc $rc in $(( $(date +%s) - t0 ))s (limit ${limit}s)$([ $rc = 124 ] && echo ' TIMED OUT')"
  { grep -E "passed|failed|error|XPASS|xfail|INCOMPLETE" "$work/$name.log" | tail -n 3; tail -n 2 "$work/$name.log"; } \
    | awk '!seen[$0]++' | sed 's/^/    /' | tee -a "$summary"  # test counts, then the last lines, each once
  tar czf "$OUT/gpu_check.tar.gz" --exclude='*.pt' -C "$work" .  # after every stage: a later kill loses nothing finished
}

stage tests 80 40 "${PYTEST[@]}" --junitxml "$work/tests.xml" "${TESTS[@]}"
stage cli 180 60 "${PYTEST_CLI[@]}" --junitxml "$work/cli.xml" tests/test_cuda.py -k cli_stopped
stage fast 150 90 $B $FAST $SIZE $EPOCH --methods ce,dlb --no-pairs --pil-methods dlb \
  --out "$work/${DEV}_resnet32_b64_fast" --throughput-file ''
stage fp32 100 60 $B $SIZE --methods ce,dlb,dlb:backward=split --no-pil --out "$work/${DEV}_resnet32_b64_throughput" \
  --throughput-file "$work/throughput.json"
# claim 1's resnet20 cell: the experiment's CPU settings, on CUDA with the official numerics; then its report
SEEDS=$([ "$SMOKE" = 1 ] && echo 0,1 || echo 0,1,2,3,4)
stage claims 120 60 bash -c "$PY -m dlb.sweep experiment=cpu_claim1_backbones backbone=resnet20 trainer.faithful=true \
  trainer.channels_last=auto $CLAIMS hydra.sweep.dir=$work/${DEV}_claim1_runs --run \
  && $PY -m dlb.report $work/${DEV}_claim1_runs --seeds $SEEDS --name ${DEV}_claim1 --out $work/${DEV}_claim1"
stage jobs 60 40 $B $FAST $SIZE --jobs $JOBS --methods dlb --no-pil --out "$work/${DEV}_resnet32_b64_jobs"
stage speed 70 45 $B $SIZE --speed "${SPEED[@]}" --methods dlb --no-pil --out "$work/${DEV}_resnet32_b64_speed"
stage nccl 40 30 "${PYTEST[@]}" --junitxml "$work/nccl.xml" "${NCCL[@]}"

for f in "$work"/*_fast.md "$work"/*_throughput.md; do  # the targets tables, for reading in the reply itself
  [ -f "$f" ] && { echo; echo "== $(basename "$f")"; sed -n '/^### Targets/,$p' "$f"; } >> "$summary"
done
tar czf "$OUT/gpu_check.tar.gz" --exclude='*.pt' -C "$work" . && say "packed $(ls "$work" | wc -l) files into $OUT/gpu_check.tar.gz"
