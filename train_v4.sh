#!/usr/bin/env bash
# Train and evaluate AttentionRobust v4 (or a baseline) and print the missing-rate table.
#
#   bash train_v4.sh                                   # embedded MOSI-shaped data set, 3 seeds x 6 epochs
#   bash train_v4.sh --epochs 2                        # extra flags pass through to the CLI
#   DATA_PATH=../shared/data/mosi_bclstm_dev.pkl bash train_v4.sh
#   bash train_v4.sh --data_path /data/MOSI/aligned_50.pkl --model ef_lstm
#   USE_AECF=0 GATE_ALPHA=0.7 SEEDS="1 2 3" bash train_v4.sh
#
# Every flag of the CLI can be set by its upper-case variable (HIDDEN_DIM=64 -> --hidden_dim 64;
# lists such as SEEDS="1 2 3" are space-separated; switches take 1/0: USE_VAE=0 -> --no_use_vae;
# CONTRASTIVE_TEMP is --contrastive_temperature; CONFIG=exp.yaml -> --config, THREADS=4 -> --threads).
# An empty variable leaves the CLI default, and flags given after the script name come last and win.
# The flags taken from the environment are named on stderr before the run.
# Without OUTPUT_DIR / --output_dir every run gets its own folder runs/<model>_<data>_<YYYYmmdd-HHMMSS>,
# linked as runs/latest. Relative paths are relative to the directory you run this from. PYTHON=echo
# prints the command instead.
# `python attention_robust_v4.py --help` lists every flag with its default.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

: "${PYTHON:=python3}"
# The embedded data set (no data file, no --config): 6 epochs keep the first command to about a minute.
defaults=()
if [[ -z "${EPOCHS:-}${DATA_PATH:-}${DATASET:-}${CONFIG:-}" && " $* " != *" --data_path"* && " $* " != *" --dataset"* \
      && " $* " != *" --config"* ]]; then defaults=(--epochs 6); fi
mapper="$PYTHON"; [[ "$PYTHON" == echo ]] && mapper=python3
env_args="$(PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$mapper" -m training.config --env-args)" || exit $?
eval "args=($env_args)"  # shell-quoted by Python's shlex.join

# ${a[@]+"${a[@]}"}: an empty array under set -u (bash before 4.4 calls "${a[@]}" unbound)
exec "$PYTHON" "$here/attention_robust_v4.py" ${defaults[@]+"${defaults[@]}"} ${args[@]+"${args[@]}"} "$@"
