#!/usr/bin/env bash
# English pretraining as reported in the README: a fresh 16k WordPiece vocabulary from
# wiki-topics-en, then BERT-mini (L4/H256) for 1,500 steps of 64 sequences (~25 min on 2 CPU cores).
set -euo pipefail
BF=${BF:-.venv/bin/bertforge}
OUT=${OUT:-runs/en}
mkdir -p "$OUT"
CORPUS=$($BF fetch wiki-topics-en)/corpus.txt
$BF vocab --corpus "$CORPUS" --vocab-size 16000 --out "$OUT/vocab.txt"
$BF prepare-pretrain --corpus "$CORPUS" --vocab "$OUT/vocab.txt" --out "$OUT/shards" \
    --max-seq-len 128 --dupe-factor 5 --eval-fraction 0.03
$BF pretrain --data "$OUT/shards" --out "$OUT/run" --preset mini --max-steps 1500 --batch-size 64 \
    --lr 7e-4 --warmup 0.06 --dropout 0 --save-every 250 --eval-every 250
