#!/usr/bin/env bash
# Chinese pretraining as reported in the README: the bert-base-chinese vocabulary, a corpus of the
# chinese-sentiment *training* reviews and the People's Daily *training* sentences (so the
# fine-tuning test sets stay unseen), whole-word masking with jieba, BERT-mini for 1,500 steps.
set -euo pipefail
BF=${BF:-.venv/bin/bertforge}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/zh}
mkdir -p "$OUT"
SENTIMENT=$($BF fetch chinese-sentiment)
NER=$($BF fetch peoples-daily)
$PY - "$SENTIMENT" "$NER" "$OUT/corpus.txt" <<'PY'
import csv, sys
sentiment, ner, out = sys.argv[1:]
with open(out, "w", encoding="utf-8") as f:
    for r in csv.DictReader(open(f"{sentiment}/train.csv", encoding="utf-8")):
        f.write(r["text"] + "\n\n")  # each review a document
    blocks = open(f"{ner}/train.conll", encoding="utf-8").read().split("\n\n")
    sents = ["".join(line.split("\t")[0] for line in b.splitlines()) for b in blocks if b.strip()]
    for i in range(0, len(sents), 20):  # People's Daily training sentences, 20 to a document
        f.write("\n".join(sents[i : i + 20]) + "\n\n")
PY
$BF prepare-pretrain --corpus "$OUT/corpus.txt" --vocab chinese-vocab --out "$OUT/shards" \
    --max-seq-len 128 --whole-word-mask --dupe-factor 3 --eval-fraction 0.02
$BF pretrain --data "$OUT/shards" --out "$OUT/run" --preset mini --max-steps 1500 --batch-size 64 \
    --lr 7e-4 --warmup 0.06 --dropout 0 --save-every 250 --eval-every 250
# a second stage from the first one's model (bf16 autocast on CPUs with AMX; another data order)
$BF pretrain --init "$OUT/run/final" --data "$OUT/shards" --out "$OUT/run2" --max-steps 1200 --batch-size 64 \
    --lr 5e-4 --warmup 0.06 --dropout 0 --precision bf16 --seed 1 --save-every 250 --eval-every 250
# a third stage from the second one's model: character-level masks drawn afresh for every batch
# (--dynamic-mask). On this CPU the loss left the first plateau about 1,500 steps into it; the README's
# fine-tuning results use its step-3000 checkpoint ($OUT/run3/checkpoints/step-3000).
$BF prepare-pretrain --corpus "$OUT/corpus.txt" --vocab chinese-vocab --out "$OUT/shards-char" \
    --max-seq-len 128 --dynamic-mask --dupe-factor 5 --eval-fraction 0.02
$BF pretrain --init "$OUT/run2/final" --data "$OUT/shards-char" --out "$OUT/run3" --max-steps 4800 --batch-size 64 \
    --lr 5e-4 --warmup 0.05 --dropout 0 --precision bf16 --seed 2 --save-every 500 --eval-every 500
