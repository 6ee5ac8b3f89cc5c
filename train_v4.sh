#!/usr/bin/env bash
# Train and evaluate AttentionRobust v4 (or a baseline) and print the missing-rate table.
#
#   bash train_v4.sh                                   # embedded MOSI-shaped data set, 3 seeds
#   bash train_v4.sh --epochs 2                        # extra flags pass through to the CLI
#   DATA_PATH=../shared/data/mosi_bclstm_dev.pkl bash train_v4.sh
#   bash train_v4.sh --data_path /data/MOSI/aligned_50.pkl --model ef_lstm
#   USE_AECF=0 GATE_ALPHA=0.7 SEEDS="1 2 3" bash train_v4.sh
#
# Every variable below can be set from the environment; an empty value leaves the CLI default.
# Switches take 1/0 (on/off). Flags given after the script name come last and win.
# `python attention_robust_v4.py --help` lists every flag with its default.
set -euo pipefail
cd "$(dirname "$0")"

: "${PYTHON:=python3}"
: "${DATASET:=synthetic}"            # synthetic | mosi | mosei
: "${DATA_PATH:=}"                   # MMSA/MulT pickle or .csd folder (overrides DATASET's default source)
: "${DATA_FORMAT:=auto}"             # auto | mmsa | mult | csd
: "${MODEL:=attention_robust_v4}"    # attention_robust_v4 | lf_dnn | ef_lstm | tfn
: "${OUTPUT_DIR:=}"                  # default: runs/<model>_<dataset>
: "${SEEDS:=}"                       # e.g. "1111 1112 1113"
: "${EPOCHS:=}"
: "${BATCH_SIZE:=}"
: "${LR:=}"
: "${HIDDEN_DIM:=}"
: "${DROPOUT:=}"
: "${ENCODER:=}"                     # mlp | lstm
: "${TRAIN_MISSING_RATE:=}"          # train-time modality dropout (0 disables)
: "${USE_CONTRASTIVE:=}"             # 1 | 0
: "${CONTRASTIVE_WEIGHT:=}"
: "${CONTRASTIVE_TEMP:=}"
: "${USE_GATED_FUSION:=}"            # 1 | 0
: "${GATE_ALPHA:=}"
: "${FUSION_TEMPERATURE:=}"
: "${FOCAL_GAMMA:=}"
: "${LABEL_SMOOTHING:=}"
: "${USE_AECF:=}"                    # 1 | 0
: "${AECF_MASK_PROB:=}"
: "${AECF_ENTROPY_TARGET:=}"
: "${AECF_MIN_ACTIVE:=}"
: "${ENTROPY_WEIGHT:=}"
: "${USE_VAE:=}"                     # 1 | 0
: "${VAE_WEIGHT:=}"
: "${KL_WEIGHT:=}"
: "${UNIMODAL_WEIGHT:=}"             # per-modality probe supervision (0 disables)
: "${DISTILL_WEIGHT:=}"              # self-distillation toward the full-modality prediction (0: off)
: "${DEVICE:=}"                      # auto | cpu | cuda
: "${QUIET:=}"                       # 1: no progress bars

args=(--dataset "$DATASET" --data_format "$DATA_FORMAT" --model "$MODEL")
[[ -n "$DATA_PATH" ]] && args+=(--data_path "$DATA_PATH")
if [[ -z "$OUTPUT_DIR" ]]; then
  src="$DATASET"; [[ -n "$DATA_PATH" ]] && src="$(basename "${DATA_PATH%/}")"; src="${src%.*}"
  OUTPUT_DIR="runs/${MODEL}_${src}"
fi
args+=(--output_dir "$OUTPUT_DIR")
# shellcheck disable=SC2206  # SEEDS is a space-separated list on purpose
[[ -n "$SEEDS" ]] && args+=(--seeds $SEEDS)

value() { [[ -n "$2" ]] && args+=("--$1" "$2"); return 0; }
switch() {
  case "$2" in
    "") ;;
    1|true|on|yes) args+=("--$1") ;;
    0|false|off|no) args+=("--no_$1") ;;
    *) echo "train_v4.sh: $1 must be 1 or 0, got '$2'" >&2; exit 2 ;;
  esac
}
value epochs "$EPOCHS"; value batch_size "$BATCH_SIZE"; value lr "$LR"
value hidden_dim "$HIDDEN_DIM"; value dropout "$DROPOUT"; value encoder "$ENCODER"
value train_missing_rate "$TRAIN_MISSING_RATE"
switch use_contrastive "$USE_CONTRASTIVE"; value contrastive_weight "$CONTRASTIVE_WEIGHT"
value contrastive_temperature "$CONTRASTIVE_TEMP"
switch use_gated_fusion "$USE_GATED_FUSION"; value gate_alpha "$GATE_ALPHA"
value fusion_temperature "$FUSION_TEMPERATURE"
value focal_gamma "$FOCAL_GAMMA"; value label_smoothing "$LABEL_SMOOTHING"
switch use_aecf "$USE_AECF"; value aecf_mask_prob "$AECF_MASK_PROB"
value aecf_entropy_target "$AECF_ENTROPY_TARGET"; value aecf_min_active "$AECF_MIN_ACTIVE"
value entropy_weight "$ENTROPY_WEIGHT"
switch use_vae "$USE_VAE"; value vae_weight "$VAE_WEIGHT"; value kl_weight "$KL_WEIGHT"
value unimodal_weight "$UNIMODAL_WEIGHT"; value distill_weight "$DISTILL_WEIGHT"
value device "$DEVICE"
switch quiet "$QUIET"

exec "$PYTHON" attention_robust_v4.py "${args[@]}" "$@"
