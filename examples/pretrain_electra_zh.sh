#!/usr/bin/env bash
# Chinese ELECTRA (replaced-token detection) on the data of examples/pretrain_zh.sh: the bert-base-chinese
# vocabulary, the chinese-sentiment *training* reviews and the People's Daily *training* sentences, the
# same jieba whole-word-masked shards (their next-sentence labels are not used: ELECTRA has no NSP).
# Model: ELECTRA-small-shaped (12 layers, hidden 256, 4 heads, 128-wide embeddings) with a generator a
# quarter as wide (hidden 64), both sharing the embeddings; loss = generator MLM + 50 x discriminator BCE.
#
#   STEPS=200 examples/pretrain_electra_zh.sh      # a short run: the curves (docs/pretrain-electra-zh.png)
#   FULL=1 examples/pretrain_electra_zh.sh         # the same-budget comparison with the README's MLM model
#
# FULL=1 pretrains for about as long as the three MLM stages together (~100 CPU minutes alone on the
# 2-core machine; set STEPS to fit another machine) and then fine-tunes the discriminator on
# chinese-sentiment and People's Daily NER with the README's recipes, and a random-init ELECTRA-small
# with the same recipe for the McNemar test. It needs hours of a quiet CPU.
set -euo pipefail
BF=${BF:-.venv/bin/bertforge}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/zh}
STEPS=${STEPS:-1500}
mkdir -p "$OUT"
SENTIMENT=$($BF fetch chinese-sentiment)
NER=$($BF fetch peoples-daily)
if [ ! -f "$OUT/shards/manifest.json" ]; then  # the same corpus and shards as examples/pretrain_zh.sh
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
fi
$BF pretrain --objective electra --data "$OUT/shards" --out "$OUT/electra" --preset L12-H256 --generator-size 0.25 \
    --max-steps "$STEPS" --batch-size 64 --lr 5e-4 --warmup 0.06 --dropout 0 --save-every 250 \
    --eval-every "$(( STEPS < 500 ? 50 : 250 ))"
[ "${FULL:-0}" = 1 ] || exit 0

# fine-tuning with the README's recipes: the discriminator, and the same architecture from random weights
$PY - "$OUT/electra/final" "$OUT/electra-random" <<'PY'
import sys, torch
from bertforge import BertConfig, BertModel, Tokenizer, save_pretrained
torch.manual_seed(0)
config = BertConfig.from_json(f"{sys.argv[1]}/config.json").replace(architectures=None)
save_pretrained(BertModel(config), sys.argv[2], tokenizer=Tokenizer.from_pretrained(sys.argv[1]))
PY
for MODEL in electra/final electra-random; do
    NAME=$(echo "$MODEL" | tr / -)
    $BF finetune classify --model "$OUT/$MODEL" --train "$SENTIMENT/train.csv" --valid "$SENTIMENT/valid.csv" \
        --out "$OUT/sentiment-$NAME" --epochs 2 --lr 2e-4 --batch-size 32 --max-length 128 --dropout 0.1
    $BF evaluate --model "$OUT/sentiment-$NAME" --data "$SENTIMENT/test.csv"
    $BF finetune tag --model "$OUT/$MODEL" --train "$NER/train.conll" --out "$OUT/ner-$NAME" \
        --epochs 2 --lr 3e-4 --batch-size 32 --max-length 128 --dropout 0.1
    $BF evaluate --model "$OUT/ner-$NAME" --data "$NER/test.conll"
done
