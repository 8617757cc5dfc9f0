#!/usr/bin/env bash
# The prepared pretraining run for a lent GPU machine (issue 16): one command, bounded in time, whose whole
# run folder comes back in files small enough for the device tool (at most 8 files of 16 MiB), so that a later
# session -- on a GPU or on a CPU -- can unpack it and resume, or ship its `default`.
#
#   make device-wheels                      # here, once: the packages the GPU image lacks, into .whl/
#   bash benchmarks/device_pretrain.sh NAME [pretrain settings key=value ...]    # there, carrying .whl
#   cat DIR/NAME.tar.part-* | tar -x -C pretrain-runs      # here: the run folder pretrain-runs/NAME again
#
# Environment: OUT (where the parts go; the device tool sets it), DEVICE (cuda), WORKERS (16 rendering
# processes), PRECISION (bf16), BUDGET_S (510: the pretraining's wall-clock limit; the packing takes seconds),
# WHEELS (.whl: installed first when it holds wheels).
# At the limit the run stops at its last checkpoint, which is packed like a finished run: resume it with
# `adaptkit pretrain --out pretrain-runs/NAME` (its settings travel in config.json).
set -uo pipefail

name=${1:?usage: device_pretrain.sh NAME [key=value ...]}
shift
out=${OUT:?set OUT to the folder the parts go to}
run_root=$(mktemp -d)
mkdir -p "$out"

wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then  # the device tool's way of carrying packages (device/README.md)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
# progress bars refresh every 10 s at most, so the log that comes back stays short
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-10}

# SIGINT at the limit: the CLI stops cleanly at the last checkpoint and says how to resume.
timeout -s INT "${BUDGET_S:-510}" python3 -m adaptkit.cli pretrain --out "$run_root/$name" \
    --device "${DEVICE:-cuda}" --workers "${WORKERS:-16}" "precision=${PRECISION:-bf16}" "$@" \
    2>&1 | tee "$out/$name.log"
status=${PIPESTATUS[0]}

# 15 MiB parts keep each file under the device tool's 16 MiB; more than 8 would not all come back.
tar -c -C "$run_root" "$name" | split -b 15M -d - "$out/$name.tar.part-"
parts=$(find "$out" -name "$name.tar.part-*" | wc -l)
echo "pretraining exited with $status; packed $run_root/$name into $parts part(s) of at most 15 MiB in $out"
if [ "$parts" -gt 7 ]; then  # the log is the eighth file
    echo "warning: more than 7 parts: the device tool returns 8 files at most; pretrain a smaller model" >&2
fi
exit "$status"
