#!/usr/bin/env bash
# The demo behind `make demo`: sentence similarity with a real checkpoint, then a sentiment
# classifier fine-tuned from it on a slice of rotten-tomatoes in about two minutes on a laptop CPU.
set -euo pipefail
BF=${BF:-.venv/bin/bertforge}
OUT=${OUT:-runs/demo}
mkdir -p "$OUT"

echo "== 1. Do two sentences mean the same? (minilm-l6, cosine of mean-pooled embeddings)"
$BF similarity --model minilm-l6 --pairs examples/pairs.tsv

echo
echo "== 2. Fine-tune minilm-l6 for sentiment on 4,800 rotten-tomatoes reviews (150 steps)"
RT=$($BF fetch rotten-tomatoes)
${PY:-.venv/bin/python} - "$RT/train.csv" "$OUT/train.csv" <<'CSV'
import csv, itertools, sys  # the header and the first 4,800 reviews (records, not lines: a review may span lines)
with open(sys.argv[1], encoding="utf-8", newline="") as f, open(sys.argv[2], "w", encoding="utf-8", newline="") as out:
    csv.writer(out).writerows(itertools.islice(csv.reader(f), 4801))
CSV
rm -rf "$OUT/sentiment"
$BF finetune classify --model minilm-l6 --train "$OUT/train.csv" --valid "$RT/valid.csv" --out "$OUT/sentiment" \
    --max-steps 150 --batch-size 32 --lr 1e-4 --eval-every 75

echo
N_TEST=$(${PY:-.venv/bin/python} -c 'import csv, sys; print(sum(1 for _ in csv.DictReader(open(sys.argv[1], encoding="utf-8"))))' "$RT/test.csv")
echo "== 3. Held-out accuracy on the test split ($N_TEST reviews)"
$BF evaluate --model "$OUT/sentiment" --data "$RT/test.csv" --output "$OUT/test_metrics.json"

echo
echo "== 4. Predictions for new sentences"
$BF predict --model "$OUT/sentiment" --input examples/reviews.jsonl --output "$OUT/predictions.jsonl" >/dev/null
.venv/bin/python - "$OUT/predictions.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    print(f"{r['label']:7} {r['score']:.3f}  {r['text']}")
PY
