"""ACLSum (Takeshita et al., 2024): extractive summaries of ACL papers, one per aspect (challenge,
approach, outcome). BertSum fine-tuned from minilm-l6 beside Lead-3, the training-free centroid mode
and two oracles, on the test split.

    python benchmarks/aclsum.py --out runs/aclsum

A document is the paper's abstract, introduction and conclusion, sentence by sentence; a sentence's
label is the experts' highlight for the aspect, and the reference summary is the aspect's (abstractive,
one-sentence) summary. The model trains on train (100 papers) for ``--max-steps`` steps of
``--batch-size`` papers and is validated on val (50). It has 2 inter-sentence layers by default: a
paper is read in several 512-token windows, and only layers over all its sentence vectors (with
document-level sentence positions) can tell the abstract's first sentence from the first sentence
of a later window (``--inter-layers 0`` is the plain linear head). Every system picks 3 sentences
(trigram blocking on, where it applies) except the highlight oracle, which picks the gold
highlights. Prints test ROUGE-1/2/L F1 against the summary and highlight precision/recall/F1, and
writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import Listed, argument_parser

from bertforge.api import finetune, load_task
from bertforge.assets import fetch
from bertforge.infer import Embedder
from bertforge.summary import (
    greedy_oracle,
    join,
    lead,
    read_documents,
    score_summaries,
    summarize_untrained,
)
from bertforge.tasks import TaskSpec
from bertforge.train import TrainArgs

ASPECTS = ("challenge", "approach", "outcome")
PARTS = ("abstract", "introduction", "conclusion")


def convert(source: Path, out: Path, aspect: str) -> dict[str, Path]:
    """aclsum's train/val/test.jsonl -> our extsum JSONL for one aspect: {id, sentences, labels, summary}."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "val", "test"):
        rows = [
            json.loads(line) for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line
        ]
        path = out / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                sentences = [s for part in PARTS for s in r["sentences"][part]]
                labels = [int(y) for part in PARTS for y in r["highlights"][aspect][part]]
                record = {"id": r["id"], "sentences": sentences, "labels": labels, "summary": r["summary"][aspect]}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths[split] = path
    return paths


def chosen(selected: list[int], sentences: list[str]) -> dict:
    return {"summary": join([sentences[i] for i in selected]), "selected": selected}


def run_aspect(aspect: str, out: Path, args: argparse.Namespace, embedder: Embedder) -> dict[str, dict]:
    paths = convert(fetch("aclsum"), out / "data", aspect)
    model_dir = out / "model"
    spec = TaskSpec("extsum", max_length=512, extra={"top_k": 3, "inter_layers": args.inter_layers})
    train_args = TrainArgs(
        out=model_dir / "run",
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=0.1,
        eval_every=args.max_steps,
        seed=args.seed,
        progress=False,
    )
    start = time.perf_counter()
    valid = finetune(
        "extsum", args.model, paths["train"], model_dir, valid_file=paths["val"], spec=spec, args=train_args
    )
    train_s = time.perf_counter() - start

    docs = read_documents(paths["test"])
    task, net = load_task(model_dir)
    systems = {
        "BertSum (minilm-l6, fine-tuned)": task.predict(net, docs),
        "Lead-3": [chosen(lead(d.sentences, 3), d.sentences) for d in docs],
        "centroid (minilm-l6, no training)": summarize_untrained(embedder, docs, "centroid", top_k=3),
        "oracle: gold highlights": [chosen([i for i, y in enumerate(d.labels) if y], d.sentences) for d in docs],
        "oracle: greedy ROUGE (k<=3)": [chosen(greedy_oracle(d.sentences, d.summary, 3), d.sentences) for d in docs],
    }
    results = {name: score_summaries(preds, docs) for name, preds in systems.items()}
    results["_run"] = {"train_seconds": round(train_s, 1), "valid": valid}
    return results


def main() -> None:
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/aclsum"), help="where each aspect's run directory goes")
    parser.add_argument(
        "--aspects", action=Listed, options=ASPECTS, default=list(ASPECTS), help="ACLSum aspects to fine-tune and score"
    )
    parser.add_argument("--model", default="minilm-l6", help="encoder to start from (directory or registry name)")
    parser.add_argument("--max-steps", type=int, default=30, help="training steps per aspect")
    parser.add_argument("--batch-size", type=int, default=2, help="documents per step")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    parser.add_argument(
        "--inter-layers", type=int, default=2, help="inter-sentence Transformer layers of the summarization head"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()

    embedder = Embedder.from_pretrained("minilm-l6")
    table = {}
    for aspect in args.aspects:
        table[aspect] = run_aspect(aspect, args.out / aspect, args, embedder)
        (args.out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
        print(f"{aspect}: trained in {table[aspect]['_run']['train_seconds']:.0f}s", flush=True)

    print("\n| aspect | system | R-1 | R-2 | R-L | highlight P | R | F1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for aspect, results in table.items():
        for name, m in results.items():
            if name.startswith("_"):
                continue
            print(
                f"| {aspect} | {name} | {m['rouge1']:.1f} | {m['rouge2']:.1f} | {m['rougeL']:.1f} "
                f"| {100 * m['precision']:.1f} | {100 * m['recall']:.1f} | {100 * m['f1']:.1f} |"
            )
    print(f"\nwrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
