#!/usr/bin/env bash
# Customer service FAQ matching: a user's question against a bank of known questions (examples/faq.jsonl),
# with minilm-l6 as shipped: index the bank once, then search it (exact cosine similarity).
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/bertforge-faq}
bertforge index --model minilm-l6 --input faq.jsonl --out "$OUT/index"
bertforge search --index "$OUT/index" --corpus faq.jsonl -k 3 \
  "I forgot my login, how do I get back in?" \
  "the package came smashed" \
  "can I pay with paypal"
