# Shared by gpu_checks.sh and gpu_profile.sh (sourced): PYTHON, OUT and WORK are set by the caller.

# say_run LOG WHAT...: appends a header for this call to LOG (earlier calls' lines stay)
say_run() {
    local log=$1
    shift
    { echo "== $(date -u +%FT%TZ) $*"
      echo "tree: ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"; git status --short 2>/dev/null
      nvidia-smi || true; } >>"$log" 2>&1
}

# install_segstream LOG: the package's folders map under `segstream` only once installed; a
# Python where this tree already imports is left as it is
install_segstream() {
    local log=$1
    if "$PYTHON" -c "import pathlib, segstream.pipeline.cli as cli; assert pathlib.Path(cli.__file__).resolve().parents[1] == pathlib.Path.cwd().resolve()" 2>/dev/null; then
        echo "segstream: this tree's, already importable" >>"$log"
        return 0
    fi
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$log" 2>&1 || {
        echo "segstream would not install (pip needs setuptools>=68 in that Python: add its wheel to the list): see $log" >&2
        return 1; }
}

# write_clip FRAMES PATH LOG: a 1080p synthetic H.264 clip, written whole under another name first
# (a clip cut short is never reused)
write_clip() {
    local frames=$1 clip=$2 log=$3
    [ -s "$clip" ] && return 0
    "$PYTHON" -c "import sys; from segstream.connectors.synthetic import write_clip; write_clip(sys.argv[1], sys.argv[2], 1920, 1080, int(sys.argv[3]), seed=3, fps=30)" \
        "$WORK/partial.mp4" "$WORK/partial.npz" "$frames" >>"$log" 2>&1 && mv "$WORK/partial.mp4" "$clip" &&
        mv "$WORK/partial.npz" "${clip%.mp4}.npz" || { echo "could not write the 1080p clip: see $log" >&2; return 1; }
}
