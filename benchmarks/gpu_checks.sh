#!/usr/bin/env bash
# The open GPU figures of the engine issue, prepared for the device machine; each log lands in $OUT.
#
#   bash benchmarks/gpu_checks.sh install DIR         # wheels in DIR (what the image lacks) into .gpu/site
#   bash benchmarks/gpu_checks.sh run STEP [STEP...]  # tests eager large forward small decoder soak, each time-limited
#
# It runs in the Python given as PYTHON (python3), which needs segstream's dependencies (where it
# has no network: `install DIR` of their wheels, docs/BENCHMARKS.md, "GPU"); segstream itself is
# installed editable from this tree unless that Python imports it from here already. Each call
# appends to $OUT/env.log; each step's log is its own. SCALE=small DEVICE=cpu runs every step
# briefly (the tiny model, compiled in `large`), to try the script on a machine without a GPU.
set -u -o pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$PWD/.gpu/out}
WORK=$PWD/.gpu
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

if [ "${1:-}" = install ] && [ $# -eq 2 ]; then
    exec "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$2"/*.whl
fi
if [ "${1:-}" != run ] || [ $# -lt 2 ]; then
    echo "usage: gpu_checks.sh install DIR | run STEP... (steps: tests eager large forward small decoder soak)" >&2
    exit 2
fi
shift

if [ "${SCALE:-full}" = small ]; then  # small models, a few frames; `large` compiles the tiny one
    CLIP_FRAMES=12 LARGE=synthetic_eomt_tiny_256 COMPILE=true L_FRAMES=8 L_BATCH=2 S_SOURCES=2 S_FRAMES=4
    NAIVE=4 SOAK_MINUTES=0.3 FORWARD="--sizes S --batch 1 --repeat 1 --warmup 1" LIMITS=2
else
    # batch 8: 12,800 tokens a batch fill the GPU, and one compiled bucket fewer than 16 (each takes a compile)
    CLIP_FRAMES=150 LARGE=coco_panoptic_eomt_large_640 COMPILE=true L_FRAMES=1500 L_BATCH=8 S_SOURCES=16 S_FRAMES=450
    NAIVE=200 SOAK_MINUTES=1.5 FORWARD="--sizes L --batch 1 8 --dtype bf16 --compile" LIMITS=1
fi
. benchmarks/gpu_common.sh  # (in the repository root by now)
say_run "$OUT/env.log" "gpu_checks.sh run $*"
install_segstream "$OUT/env.log" || exit 1
"$PYTHON" -c "import torch, av; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'av', av.__version__)" \
    >>"$OUT/env.log" 2>&1
CLIP=$WORK/fhd$CLIP_FRAMES.mp4
write_clip "$CLIP_FRAMES" "$CLIP" "$OUT/env.log" || exit 1
SEGSTREAM=("$PYTHON" -m segstream.pipeline.cli)
ON=(--set "sources.0.path=$CLIP" --set "model.device=$DEVICE" --set model.checkpoint=random)

FAILED=0
step() {  # step NAME SECONDS COMMAND...: one check, its output in $OUT/NAME.log, stopped after SECONDS
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS rc=0
    timeout -k 15 "$((limit * LIMITS))" "$@" >"$OUT/$name.log" 2>&1 || rc=$?  # a slow CPU's dry run: twice as long
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/env.log"
    [ "$rc" -eq 0 ] || FAILED=1
}

for name in "$@"; do
    case $name in
    # -rs lists what was skipped: on the device a skipped CUDA test is a failed check, not a pass
    tests) step tests 90 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -o addopts= tests/test_cuda_engine.py  # no xdist needed
        if [ "$DEVICE" = cuda ] && grep -q "SKIPPED" "$OUT/tests.log"; then
            echo "tests: CUDA tests were skipped on the device: see $OUT/tests.log" | tee -a "$OUT/env.log"; FAILED=1
        fi ;;
    forward) step forward 150 "$PYTHON" benchmarks/model_forward.py --device "$DEVICE" $FORWARD ;;
    # eager: the large model uncompiled (no compile time, so the figure comes first); large: compiled,
    # a compile and a CUDA graph capture for each batch bucket (1, 2, 4, 8) before the first frame
    eager|large) if [ "$name" = eager ]; then compiled=false limit=150; else compiled=$COMPILE limit=330; fi
        step "$name" "$limit" "${SEGSTREAM[@]}" bench configs/demo.yaml "${ON[@]}" \
        --set "model.preset=$LARGE" --set "model.compile=$compiled" --set "engine.batch_size=$L_BATCH" \
        --set sources.0.queue_size=32 --set engine.frame_budget_mb=256 --frames "$L_FRAMES" --naive-frames "$NAIVE" ;;
    small) step small 100 "${SEGSTREAM[@]}" bench configs/demo.yaml "${ON[@]}" \
        --set model.preset=coco_panoptic_eomt_small_640_2x --set sources.0.realtime=true \
        --sources "$S_SOURCES" --frames "$S_FRAMES" --naive-frames "$NAIVE" ;;
    decoder) step decoder 100 "${SEGSTREAM[@]}" bench configs/demo.yaml "${ON[@]}" \
        --set model.preset=coco_panoptic_eomt_small_640_2x --set sources.0.realtime=true \
        --set engine.resize_in_decoder=true --sources "$S_SOURCES" --frames "$S_FRAMES" --naive-frames "$NAIVE" ;;
    soak) step soak 130 "$PYTHON" benchmarks/soak.py configs/demo.yaml "${ON[@]}" --minutes "$SOAK_MINUTES" \
        --every 10 --set model.preset=coco_panoptic_eomt_small_640_2x --set sources.0.realtime=true \
        --set sources.0.loop=true ;;
    *) echo "unknown step '$name': use tests, eager, large, forward, small, decoder or soak" >&2; exit 2 ;;
    esac
done
exit $FAILED
