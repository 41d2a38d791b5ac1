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
PYSPY=${PYSPY:-$(command -v "$WORK/site/bin/py-spy" || command -v py-spy || echo py-spy)}
ENV=$OUT/profile_env.log  # beside gpu_checks.sh's env.log in the same $OUT; each call appends
. benchmarks/gpu_common.sh
say_run "$ENV" "gpu_profile.sh $*"
install_segstream "$ENV" || exit 1
CLIP=$WORK/fhd90.mp4
write_clip 90 "$CLIP" "$ENV" || exit 1
LARGE=${LARGE:-coco_panoptic_eomt_large_640}
SMALL=${SMALL:-coco_panoptic_eomt_small_640_2x}
CLI=(-m segstream.pipeline.cli)
ON=(configs/demo.yaml --set "sources.0.path=$CLIP" --set model.checkpoint=random --set "model.device=${DEVICE:-cuda}"
    --set sources.0.queue_size=32 --set ops.http=null)  # no metrics port: another exporter may hold 9108
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
    for name in configured untracked unpublished one_thread; do  # in the order they ran
        echo "== $name"; grep -A16 "^model " "$OUT/isolate_$name.log"
    done
    exit $FAILED
fi
if ! command -v "$PYSPY" >/dev/null; then  # before any run: a GPU's minutes spent on nothing
    echo "no py-spy at '$PYSPY': install its wheel (gpu_checks.sh install DIR) or set PYSPY" >&2
    exit 1
fi
FAILED=0
spy() {  # spy NAME SECONDS PY-SPY-FLAGS... -- ARGS...: py-spy over one python run, stopped after SECONDS
    local name=$1 limit=$2
    shift 2
    local rc=0
    timeout -s INT -k 20 "$limit" "$PYSPY" record -r 100 --threads -f raw -o "$OUT/$name.txt" "$@" >"$OUT/$name.log" 2>&1 ||
        rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || FAILED=1  # 124: stopped at its limit, as meant
    echo "$name: exit $rc"
}
timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts= -k random tests/test_cuda_engine.py >"$OUT/random.log" 2>&1
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
for f in large_idle large_switch small16; do grep -A16 "^model " "$OUT/$f.log"; done
exit $FAILED
