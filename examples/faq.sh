#!/usr/bin/env bash
# Customer service FAQ matching: a user's question against a bank of known questions (faq/corpus.jsonl),
# with minilm-l6 as shipped: index the bank once, search it (exact cosine similarity), and score the
# matching on twelve user questions whose right answer is known (faq/queries.jsonl: a retrieval set).
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/bertforge-faq}
bertforge index --model minilm-l6 --input faq/corpus.jsonl --out "$OUT/index"
bertforge search --index "$OUT/index" --corpus faq/corpus.jsonl -k 3 \
  "I forgot my login, how do I get back in?" \
  "the package came smashed" \
  "can I pay with paypal"
bertforge evaluate --model minilm-l6 --data faq
