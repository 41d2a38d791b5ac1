#!/usr/bin/env bash
# Where the GPU pipeline's threads spend their time, for the next optimisation: py-spy over
# `segstream bench` on a 1080p clip (the large model, one source; the small one, 16 real-time
# sources), every thread, waits included (--idle), and which thread holds the GIL (--gil).
# Raw stacks and bench output land in $OUT; `python benchmarks/stacks.py FILE THREAD...` sums them.
#
#   bash benchmarks/gpu_profile.sh          # about 4 minutes on an H200 host
#   bash benchmarks/gpu_profile.sh isolate  # no profiler: the large model's bench as configured, with
#                                           # tracking off, with tracking and Redis off, and with one
#                                           # intra-op thread (about 3 minutes): which work holds it back
#
# Needs py-spy and segstream's dependencies (`benchmarks/gpu_checks.sh install DIR` puts wheels in .gpu/site).
set -u -o pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu/out}
WORK=$PWD/.gpu
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PYSPY=${PYSPY:-$WORK/site/bin/py-spy}
ENV=$OUT/profile_env.log  # beside gpu_checks.sh's env.log in the same $OUT, not over it
{ echo "tree: ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"; git status --short 2>/dev/null; nvidia-smi || true; } >"$ENV" 2>&1
"$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$ENV" 2>&1 || {
    echo "segstream would not install: see $ENV" >&2; exit 1; }
CLIP=$WORK/fhd90.mp4
if [ ! -s "$CLIP" ]; then  # written whole under another name first: a clip cut short is never reused
    "$PYTHON" -c "import sys; from segstream.connectors.synthetic import write_clip; write_clip(sys.argv[1], sys.argv[2], 1920, 1080, 90, seed=3, fps=30)" \
        "$WORK/partial90.mp4" "$WORK/partial90.npz" >>"$ENV" 2>&1 && mv "$WORK/partial90.mp4" "$CLIP" ||
        { echo "could not write the 1080p clip: see $ENV" >&2; exit 1; }
fi
LARGE=${LARGE:-coco_panoptic_eomt_large_640}
SMALL=${SMALL:-coco_panoptic_eomt_small_640_2x}
CLI=(-m segstream.pipeline.cli)
ON=(configs/demo.yaml --set "sources.0.path=$CLIP" --set model.checkpoint=random --set "model.device=${DEVICE:-cuda}"
    --set sources.0.queue_size=32)
L=(--set "model.preset=$LARGE" --set engine.batch_size=8 --frames 600 --naive-frames 50)
if [ "${1:-}" = isolate ]; then
    isolate() {  # isolate NAME SETTINGS...: one bench of the large model, its figures in $OUT/isolate_NAME.log
        local name=$1
        shift
        local rc=0
        timeout -k 20 100 "$PYTHON" "${CLI[@]}" bench "${ON[@]}" "${L[@]}" "$@" >"$OUT/isolate_$name.log" 2>&1 || rc=$?
        [ "$rc" -eq 0 ] || FAILED=1
        echo "isolate $name: exit $rc"
    }
    FAILED=0
    isolate configured
    isolate untracked --set tracking.enabled=false
    isolate unpublished --set tracking.enabled=false --set sinks.redis.enabled=false
    isolate one_thread --set engine.threads=1
    for f in "$OUT"/isolate_*.log; do echo "== $f"; grep -A16 "^model " "$f"; done
    exit $FAILED
fi
spy() {  # spy NAME SECONDS PY-SPY-FLAGS... -- ARGS...: py-spy over one python run, stopped after SECONDS
    local name=$1 limit=$2
    shift 2
    timeout -s INT -k 20 "$limit" "$PYSPY" record -r 100 --threads -f raw -o "$OUT/$name.txt" "$@" >"$OUT/$name.log" 2>&1
    echo "$name: exit $?"
}
timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider -k random tests/test_cuda_engine.py >"$OUT/random.log" 2>&1
echo "random weights on the GPU: exit $? ($(tail -1 "$OUT/random.log"))"
spy large_idle 75 --idle -- "$PYTHON" "${CLI[@]}" bench "${ON[@]}" "${L[@]}"
# a run that ends by itself (450 frames): one stopped from outside left its embedded Redis behind
spy large_gil 60 --gil -- "$PYTHON" "${CLI[@]}" run "${ON[@]}" --set "model.preset=$LARGE" --set engine.batch_size=8 \
    --set sources.0.loop=true --max-frames 450
# the same bench with a 0.5 ms GIL switch interval (Python's is 5 ms): does handing the GIL over sooner help?
timeout 60 "$PYTHON" -c "import runpy, sys; sys.setswitchinterval(0.0005); sys.argv = ['segstream'] + sys.argv[1:]; runpy.run_module('segstream.pipeline.cli', run_name='__main__')" \
    bench "${ON[@]}" "${L[@]}" >"$OUT/large_switch.log" 2>&1
echo "large_switch: exit $?"
spy small16 80 --idle -- "$PYTHON" "${CLI[@]}" bench "${ON[@]}" --set "model.preset=$SMALL" --set sources.0.realtime=true \
    --sources 16 --frames 60 --naive-frames 20
for f in large_idle large_switch small16; do grep -A16 "^model coco" "$OUT/$f.log"; done
