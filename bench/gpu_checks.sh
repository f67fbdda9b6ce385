#!/usr/bin/env bash
# Issue 3's GPU checks in one go, where llama-cpp-python is built with CUDA (README, GPU):
# the device duckllm picks, then throughput and batch invariance on a random-weight GGUF of the
# production model's shape (Llama-3-8B), written here from a tokenizer-only GGUF.
#
#     bench/gpu_checks.sh llama3-tokenizer.gguf [ROWS]     # SUITE=path/to/data if not ../shared/data
#
# SHAPE=tiny (bench/random_gguf.py's shapes) tries the steps quickly, on a CPU too.
#
# The naive loop's replies are capped at 5 tokens: a random-weight model never ends its reply, and
# a real one answering with a banking77 label spends 5 (4.0 label tokens on average, then <|eot_id|>).
set -u
tokenizer=$1
rows=${2:-1000}
shape=${SHAPE:-llama-3-8b}
model=${MODEL:-/tmp/$shape-random.gguf}
python=${PYTHON:-python}
suite=${SUITE:+--suite $SUITE}
step() { echo; echo "== $* ($(date +%T))"; }

step nvidia-smi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
[ -f "$model" ] || { step random model; $python bench/random_gguf.py --donor "$tokenizer" --shape "$shape" --out "$model"; }
step duckllm info
$python -m duckllm.cli info --model "$model"
step throughput
$python bench/throughput.py --model "$model" --rows "$rows" --naive-rows 50 $suite --naive-max-tokens 5
step batch invariance
$python bench/batch_invariance.py --model "$model" --rows 64 $suite
step done
