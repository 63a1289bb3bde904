#!/usr/bin/env bash
# SQuAD v1.1 as a retrieval benchmark: each question's relevant document is its own paragraph; articles
# split train/test by a hash of their titles. Then minilm-l6 as shipped, after `finetune embed` on the
# train part, and retrieve-then-rerank with a reranker trained from minilm-l6 on mined hard negatives.
# Usage: examples/squad_retrieval.sh SQUAD_V1.1.json [OUT]   (modest CPU runs: a few hundred steps)
set -euo pipefail
SQUAD=$1
OUT=${2:-runs/squad-retrieval}
python -c "import sys; from bertforge.data.squad import retrieval_split; print(retrieval_split(sys.argv[1], sys.argv[2]))" "$SQUAD" "$OUT"
bertforge evaluate --model minilm-l6 --data "$OUT/test"
bertforge finetune embed --model minilm-l6 --train "$OUT/train/pairs.jsonl" --valid "$OUT/test" \
  --out "$OUT/embed" --max-steps 300 --batch-size 32 --max-length 256
bertforge evaluate --model "$OUT/embed" --data "$OUT/test"
bertforge mine-negatives --model minilm-l6 --input "$OUT/train/pairs.jsonl" --output "$OUT/train/triplets.jsonl" \
  --range-min 1 --num-negatives 3
bertforge finetune rerank --model minilm-l6 --train "$OUT/train/triplets.jsonl" --out "$OUT/reranker" \
  --max-steps 300 --batch-size 16 --max-length 256
bertforge evaluate --model minilm-l6 --data "$OUT/test" --rerank "$OUT/reranker" --candidates 20
