#!/usr/bin/env bash
# Retrain -> export -> evaluate -> install into models/, in one go. A running service picks the
# new model up by itself (hot reload), and its /readyz shows the new model's metadata.
#
#   scripts/retrain.sh --data DIR [--data DIR ...] [other `python -m training train` flags]
#   make retrain DATA=DIR [ARGS='--steps 20000'] [BENCH='...'] [RUN_DIR=...] [MODEL_OUT=...]
#
# Environment:
#   RUN_DIR    run folder (default: runs/<UTC date-time> in the repository). To continue a run,
#              point RUN_DIR at it and pass --resume (with --steps as the new total, or without
#              it to finish the run as planned); no --data is needed then.
#   BENCH      space-separated benchmark folders (Set5, Set14, ...) to score the exported model
#              on; the table goes to RUN_DIR/eval.txt. Optional.
#   MODEL_NAME the served model's name (default: edsr_x4): installed as MODELS_DIR/MODEL_NAME.onnx,
#              which the service offers as `?model=MODEL_NAME` after a restart.
#   MODELS_DIR the folder the service serves (default: models/ in the repository).
#   DEGRADATION training degradation preset (`--degradation`: bicubic, realistic, ...); unset:
#              the flag's default, or with --resume the run's own.
#   MODEL_OUT  where the model is installed (default: MODELS_DIR/MODEL_NAME.onnx);
#              the export's metadata sidecar goes beside it (MODEL_NAME.json).
#   EXPORT_ARGS `python -m training export` flags (default "--fp16": the half-precision copy,
#              edsr_x4_fp16.onnx, that the service runs on CUDA, as shipped). Set it empty to
#              skip that copy; a previous model's fp16 copy is then removed, so that the service
#              cannot serve a stale model.
#   PYTHON     interpreter with the `train` extra (default: the repository's .venv, else python3).
#
# The model is exported into the run folder first and only copied over MODEL_OUT once export
# (with its ONNX/Keras parity check) and evaluation succeeded, so a failed run never replaces the
# model being served.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then
        PYTHON=$ROOT/.venv/bin/python
    else
        PYTHON=python3
    fi
fi

if [[ $# -eq 0 || $1 == "-h" || $1 == "--help" ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    echo
    "$PYTHON" -m training train --help
    exit 0
fi
for arg in "$@"; do
    if [[ $arg == "--out" || $arg == --out=* ]]; then
        echo "retrain.sh: set RUN_DIR instead of passing --out" >&2
        exit 2
    fi
done

RUN_DIR=${RUN_DIR:-$ROOT/runs/$(date -u +%Y%m%d-%H%M%S)}
MODEL_NAME=${MODEL_NAME:-edsr_x4}
MODEL_OUT=${MODEL_OUT:-${MODELS_DIR:-$ROOT/models}/$MODEL_NAME.onnx}
train_args=("$@")
if [[ -n ${DEGRADATION:-} ]]; then
    train_args+=(--degradation "$DEGRADATION")
fi
BENCH=${BENCH:-}
# Unset means the default; set but empty means no extra flags.
EXPORT_ARGS=${EXPORT_ARGS---fp16}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}  # TensorFlow: warnings and errors only
if [[ $MODEL_OUT != *.onnx ]]; then
    echo "retrain.sh: MODEL_OUT must end in .onnx (got $MODEL_OUT)" >&2
    exit 2
fi
STAGED="$RUN_DIR/$(basename "$MODEL_OUT")"

echo "==> 1/4 train into $RUN_DIR"
"$PYTHON" -m training train --out "$RUN_DIR" "${train_args[@]}"

# Training may run on any Keras backend; the export converts through TensorFlow (tf2onnx).
echo "==> 2/4 export $RUN_DIR/best.keras -> $STAGED"
read -r -a export_args <<<"$EXPORT_ARGS"
KERAS_BACKEND=tensorflow "$PYTHON" -m training export "$RUN_DIR/best.keras" --out "$STAGED" \
    "${export_args[@]}"

if [[ -n $BENCH ]]; then
    echo "==> 3/4 evaluate the exported model on: $BENCH"
    read -r -a bench_dirs <<<"$BENCH"
    "$PYTHON" -m training evaluate "$STAGED" --data "${bench_dirs[@]}" | tee "$RUN_DIR/eval.txt"
else
    echo "==> 3/4 evaluate: skipped (set BENCH to benchmark folders, e.g. ../shared/data/bench/Set5)"
fi

echo "==> 4/4 install $STAGED -> $MODEL_OUT"
mkdir -p "$(dirname "$MODEL_OUT")"
install_file() {  # copy, then rename: a service (re)starting meanwhile never reads half a file
    cp "$1" "$2.tmp"
    mv -f "$2.tmp" "$2"
}
install_file "$STAGED" "$MODEL_OUT"
install_file "${STAGED%.onnx}.json" "${MODEL_OUT%.onnx}.json"
# The half-precision companion (`export --fp16`), which the service prefers on CUDA
# (UPSCALER_PRECISION=auto): install the new one, and never leave the previous model's behind.
if [[ -f ${STAGED%.onnx}_fp16.onnx ]]; then
    install_file "${STAGED%.onnx}_fp16.onnx" "${MODEL_OUT%.onnx}_fp16.onnx"
elif [[ -f ${MODEL_OUT%.onnx}_fp16.onnx ]]; then
    echo "    removing ${MODEL_OUT%.onnx}_fp16.onnx: it belongs to the previous model"
    rm -f "${MODEL_OUT%.onnx}_fp16.onnx"
fi

cat <<EOF
==> done: $MODEL_OUT (metadata: ${MODEL_OUT%.onnx}.json, run: $RUN_DIR)
    A running service loads it within UPSCALER_RELOAD_INTERVAL_SECONDS (or at once on SIGHUP),
    with no restart; check its version and metadata:  curl -s http://localhost:8000/readyz
EOF
