"""Training a bi-encoder: the encoder and its sentence-transformers steps, fine-tuned so that the cosine of
two texts' embeddings says how alike they are.

Data, by its columns: (anchor, positive) pairs or (anchor, positive, negative) triplets learn with
MultipleNegativesRankingLoss (each anchor picks its positive out of every candidate in the batch:
in-batch negatives, the triplets' negatives among them; ``symmetric``: each positive picks its anchor
too); scored (sentence1, sentence2, score) pairs learn with CoSENT (pairs ranked by cosine as by score).
``matryoshka_dims`` sums the loss over truncated, re-normalised prefixes of the embedding (MatryoshkaLoss).
The losses are sentence-transformers' (its losses/*.py), checked against them in tests/tasks/test_embed.py.

Both losses compare every example of a batch with every other, so a batch is scored whole: the task
says it cannot be split under the token budget (``splittable``), and ``--grad-accum`` splits the
candidates as it does in sentence-transformers. A text met twice in a batch is encoded once, and each
example scored as in a batch without duplicates (what sentence-transformers' NoDuplicatesBatchSampler makes).

The model is written as a sentence-transformers directory with the settings in config.json, so that
``SentenceTransformer(dir)``, ``bertforge embed`` and the server read it as an encoder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import metrics
from ..batch import encoder_batch
from ..data import tables
from ..errors import BertforgeError
from ..infer import Embedder, save_sentence_transformer
from ..model import BertModel
from ..retrieval import DEPTH, RetrievalSet, evaluate_rankings, is_retrieval_set, read_retrieval_set, top_k
from ..sentence import Dense, SentenceModules, lowercased, read_sentence_dir
from .base import FinetuneTask, Soft, settings_of
from .encoder import EmbedRequest, EmbedResponse

log = logging.getLogger("bertforge")

LOSSES = ("mnrl", "cosent")
# the columns read when --columns names none, in order of preference (a negative joins when present)
PAIR_COLUMNS = (("anchor", "positive"), ("sentence1", "sentence2"))
NEGATIVE_COLUMN = "negative"
# a retrieval set's metrics, the first the one that picks the best model (as sentence-transformers' ndcg@10)
RETRIEVAL_METRICS = ("ndcg_at_10", "mrr_at_10", "map_at_100", "recall_at_1", "recall_at_10", "recall_at_100")


@dataclass
class EmbedSettings:
    loss: str | None = field(
        default=None,
        metadata={
            "help": "embed: mnrl (in-batch negatives: pairs, triplets) | cosent (scored pairs); default: cosent "
            "when the data has scores, else mnrl."
        },
    )
    columns: str | None = field(
        default=None,
        metadata={
            "help": "embed: text columns in order, comma-separated: anchor,positive[,negative] or sentence1,sentence2 "
            "(default: whichever the file has).",
            "predict": "embed: text columns, comma-separated (default: whichever the file has).",
        },
    )
    score_column: str = field(
        default="score",
        metadata={
            "help": "embed: column of similarity scores (cosent; validation: Spearman of cosine) (default score).",
            "predict": "embed: column of gold scores (default: as in training).",
        },
    )
    scale: float = field(
        default=20.0, metadata={"help": "embed: similarities times this (1 / temperature; default 20)."}
    )
    symmetric: bool = field(
        default=False,
        metadata={"help": "embed (mnrl): each positive picks its anchor too (MultipleNegativesSymmetricRankingLoss)."},
    )
    matryoshka_dims: str | None = field(
        default=None,
        metadata={"help": "embed: also train truncated embeddings, e.g. 384,256,128,64 (MatryoshkaLoss)."},
    )

    def __post_init__(self) -> None:
        if self.loss is not None and self.loss not in LOSSES:
            raise BertforgeError(f"unknown embed loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise BertforgeError(f"embed: scale must be a positive number, not {self.scale!r}")
        if self.symmetric and self.loss == "cosent":
            raise BertforgeError("embed: --symmetric is for the mnrl loss, not cosent")
        names = self.column_names()
        if names is not None and (len(names) not in (2, 3) or not all(names) or len(set(names)) != len(names)):
            raise BertforgeError(f"embed: --columns names 2 or 3 different columns, not {self.columns!r}")
        self.dims()  # (checked now)

    def column_names(self) -> list[str] | None:
        return None if self.columns is None else [c.strip() for c in str(self.columns).split(",")]

    def dims(self) -> tuple[int, ...]:
        """The Matryoshka dimensions, largest first (empty: none)."""
        if not self.matryoshka_dims:
            return ()
        parts = [p.strip() for p in str(self.matryoshka_dims).split(",")]
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise BertforgeError(
                f"embed: matryoshka dims are positive whole numbers, e.g. 384,256,128,64, not {self.matryoshka_dims!r}"
            )
        return tuple(sorted({int(p) for p in parts}, reverse=True))


@dataclass
class EmbedExample:
    texts: tuple[str, ...]  # one text (prediction only), a pair, or a triplet
    score: float | None  # the gold similarity of a pair
    line: int


# -- the losses, on embeddings (sentence-transformers' formulas) ------------------------------------------
def mnrl_loss(
    columns: list[Tensor], scale: float = 20.0, symmetric: bool = False, rows: Tensor | None = None
) -> Tensor:
    """MultipleNegativesRankingLoss: cross-entropy of each anchor (``columns[0]``, (B, D)) over every
    positive and negative of the batch, its own positive the target; ``symmetric`` averages in each
    positive over the anchors (MultipleNegativesSymmetricRankingLoss). ``rows`` ((C, B): the text each
    column holds) scores the batch as if it held no text twice (``_unseen``)."""
    anchors = F.normalize(columns[0], dim=-1)
    candidates = F.normalize(torch.cat(columns[1:]), dim=-1)  # (B * (C-1), D): positives, then negatives
    B = anchors.shape[0]
    diagonal = torch.arange(B, device=anchors.device)
    scores = anchors @ candidates.T * scale  # (B, B * (C-1))
    if rows is not None:
        scores = scores.masked_fill(_unseen(rows, rows[1:].reshape(-1)), float("-inf"))
    positive = scores[diagonal, diagonal]
    log_z = torch.logsumexp(scores, dim=1)
    if symmetric:
        back = candidates[:B] @ anchors.T * scale  # (B, B): each positive over the anchors
        if rows is not None:
            back = back.masked_fill(_unseen(rows, rows[0]), float("-inf"))
        log_z = (log_z + torch.logsumexp(back, dim=1)) / 2
    return (log_z - positive).mean()


def _unseen(rows: Tensor, candidates: Tensor) -> Tensor:
    """(B, N): the candidates (texts, N a multiple of B: column-major) that example i would not meet in a
    batch without duplicates (sentence-transformers' NoDuplicatesBatchSampler): those of another example
    that shares a text with it, and repeats of a text met earlier in the list; never its own (i, B + i...)."""
    texts = rows.T  # (B, C)
    B, groups = len(texts), len(candidates) // len(texts)
    shares = (texts[:, None, :, None] == texts[None, :, None, :]).flatten(2).any(-1)  # (B, B)
    shares.fill_diagonal_(False)
    repeat = torch.tril(candidates[:, None] == candidates[None, :], diagonal=-1).any(1)  # (N,)
    hidden = shares.repeat(1, groups) | repeat[None, :]
    own = torch.arange(B, device=rows.device)
    for g in range(groups):
        hidden[own, g * B + own] = False
    return hidden


def cosent_loss(a: Tensor, b: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT: log(1 + sum of exp(scale * (cos_i - cos_j))) over the pairs i, j with score_i < score_j."""
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1) * scale  # (B,)
    diff = (cos[:, None] - cos[None, :]).masked_fill(~(scores[:, None] < scores[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([cos.new_zeros(1), diff.flatten()]), dim=0)


def matryoshka_loss(loss, columns: list[Tensor], dims: tuple[int, ...]) -> Tensor:
    """MatryoshkaLoss: ``loss`` summed over the first ``d`` dimensions of each column, re-normalised."""
    return sum(loss([F.normalize(c[..., :d], dim=-1) for c in columns]) for d in dims)


# -- the model trained --------------------------------------------------------------------------------------
class DenseLayer(nn.Module):
    """A sentence-transformers Dense step whose weights are parameters (they train with the encoder)."""

    def __init__(self, step: Dense):
        super().__init__()
        self.weight = nn.Parameter(step.weight.detach().clone().float())
        for name in ("bias", "residual"):
            value = getattr(step, name)
            self.register_parameter(name, None if value is None else nn.Parameter(value.detach().clone().float()))
        self.activation, self.use_residual = step.activation, step.use_residual

    def step(self) -> Dense:
        return Dense(self.weight, self.bias, self.activation, self.use_residual, self.residual)


class SentenceEncoder(nn.Module):
    """The encoder and a directory's sentence-transformers steps (Pooling, Dense, Normalize), as one module
    from token ids to sentence vectors."""

    def __init__(self, encoder: BertModel, modules: SentenceModules):
        super().__init__()
        self.encoder, self.config, self.template = encoder, encoder.config, modules
        self.dense = nn.ModuleList(DenseLayer(s) for s in modules.steps if isinstance(s, Dense))

    def sentence_modules(self) -> SentenceModules:
        """The steps, their Dense weights this module's parameters."""
        layers = iter(self.dense)
        return replace(
            self.template, steps=tuple(next(layers).step() if isinstance(s, Dense) else s for s in self.template.steps)
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        modules = self.sentence_modules()
        out = self.encoder(input_ids, attention_mask, token_type_ids, pool=modules.needs_pooler)
        return modules.apply(out, attention_mask)  # (B, D) float32

    def load_saved(self, path: Path) -> None:
        """The weights of a directory this model was exported to (a checkpoint being resumed)."""
        from ..checkpoint import load_state, read_weights

        load_state(self.encoder, read_weights(path), str(path))
        saved = [s for s in read_sentence_dir(path, self.config.hidden_size).steps if isinstance(s, Dense)]
        if len(saved) != len(self.dense):
            raise BertforgeError(f"{path}: {len(saved)} Dense steps, where the model trained has {len(self.dense)}")
        with torch.no_grad():
            for layer, step in zip(self.dense, saved, strict=True):
                for name in ("weight", "bias", "residual"):
                    if getattr(layer, name) is not None:
                        getattr(layer, name).copy_(getattr(step, name))


# -- the task -------------------------------------------------------------------------------------------------
class EmbedTrainTask(FinetuneTask):
    """Fine-tune a sentence encoder (``bertforge finetune embed``); it is then used as an encoder."""

    name = "embed"
    head = None  # the model is an encoder: it exports to ONNX as one
    endpoint = batch_kind = "embed"
    about = "Sentence embeddings, pooled and normalised as the checkpoint says."
    Settings = EmbedSettings
    Request, Response = EmbedRequest, EmbedResponse
    sentence_encoder: ClassVar[bool] = True  # served and piped as the encoder's uses (tasks.for_model)
    splittable: ClassVar[bool] = False  # a batch is scored whole (train._micro_batches)
    distill_hard: ClassVar[bool] = False  # a student matches its teacher's vectors alone

    def __init__(self, spec, tokenizer, id2label=None):
        super().__init__(spec, tokenizer, id2label)
        self.settings: EmbedSettings = settings_of(EmbedSettings, spec.extra, "embed")
        self.text_tokenizer = tokenizer  # lowercased where the directory says do_lower_case (load_model)
        self.encoded: list[list[int]] = []  # token ids of each distinct training text
        self.rows: list[tuple[int, ...]] = []  # each training example's texts, as indices into encoded
        self.scores: list[float | None] = []
        self.reranker = None  # a rerank.Reranker that re-orders each query's top ``candidates`` (a retrieval set)
        self.candidates = 100

    @property
    def select_metric(self) -> str:
        return self.metric_names(self.valid_examples)[0] if self.valid_examples else "spearman"

    # -- the faces: texts (embeddings) or pairs (their cosine) ----------------------------------------
    def example(self, x: Any, where: str) -> EmbedExample:
        if isinstance(x, str):
            return EmbedExample((x,), None, 0)
        if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(t, str) and t.strip() for t in x):
            return EmbedExample(tuple(x), None, 0)
        raise BertforgeError(f"{where}: an embedding model takes texts or (text, text) pairs, not {type(x).__name__}")

    def from_request(self, body: EmbedRequest, limits) -> list[EmbedExample]:
        limits.check_texts(body.texts, "texts")
        return [EmbedExample((t,), None, 0) for t in body.texts]

    def respond(self, predictions: list[dict]) -> dict:
        return {"embeddings": [p["embedding"] for p in predictions]}

    def load(self, md, device=None, precision="fp32", runtime="torch", compile=False) -> Embedder:
        return Embedder.from_pretrained(md, device, precision, runtime, compile)

    # -- reading --------------------------------------------------------------------------------------------
    def read(self, path: Path, labelled: bool = False) -> list[EmbedExample] | list[RetrievalSet]:
        """Pairs, triplets or scored pairs (unlabelled: single texts too, from --text-column); a directory
        is a retrieval set (``retrieval.py``), read as one example."""
        if is_retrieval_set(path):
            return [read_retrieval_set(path)]
        records = tables.read_records(path)
        names = self._columns(records, path, labelled)
        columns = [tables.texts(records, n, path) for n in names]
        raw = tables.column(records, self.settings.score_column, path, required=False)
        if len(names) != 2:
            raw = [None] * len(records)
        scores = [_score(v, r.line, path, self.settings.score_column) for v, r in zip(raw, records, strict=True)]
        return [EmbedExample(tuple(c[i] for c in columns), scores[i], r.line) for i, r in enumerate(records)]

    def _columns(self, records: list[tables.Record], path: Path, labelled: bool) -> list[str]:
        given = self.settings.column_names()
        if given is not None:
            return given
        have = records[0].fields
        for pair in PAIR_COLUMNS:
            if all(c in have for c in pair):
                return [*pair, *([NEGATIVE_COLUMN] if pair[0] == "anchor" and NEGATIVE_COLUMN in have else [])]
        if not labelled and self.spec.text_column in have:
            return [self.spec.text_column]
        raise BertforgeError(
            f"{path}: no text columns: expected anchor,positive[,negative] or sentence1,sentence2, or name them "
            f"with --columns (columns: {', '.join(map(str, have))})"
        )

    def fit_labels(self, examples: list[EmbedExample], path: Path) -> None:
        """The loss the training data asks for (and the settings saved with the model say)."""
        s = self.settings
        scored = all(e.score is not None for e in examples)
        s.loss = s.loss or ("cosent" if any(e.score is not None for e in examples) else "mnrl")
        if s.loss == "cosent":
            if len(examples[0].texts) != 2 or not any(e.score is not None for e in examples):
                raise BertforgeError(f"{path}: cosent learns from pairs with a {s.score_column!r} column of scores")
            if not scored:
                line = next(e.line for e in examples if e.score is None)
                raise BertforgeError(f"{path}: line {line}: empty {s.score_column!r}")
            if len({e.score for e in examples}) < 2:
                raise BertforgeError(f"{path}: every {s.score_column!r} is the same: nothing to learn")
            if s.symmetric:
                raise BertforgeError("embed: --symmetric is for the mnrl loss, not cosent")
        elif any(e.score is not None for e in examples):
            raise BertforgeError(
                f"{path}: mnrl learns from (anchor, positive) pairs and would ignore {s.score_column!r}: "
                "use --loss cosent, or drop the column"
            )

    def load_model(self, md) -> SentenceEncoder:
        """The directory's encoder and sentence-transformers steps (mean pooling, normalised, without them)."""
        from ..checkpoint import load_pretrained

        modules = md.sentence
        if modules.needs_pooler:
            raise BertforgeError(f"{md.root}: pooler pooling has no sentence-transformers module: use mean or cls")
        width = modules.dimension(md.config.hidden_size)
        dims = self.settings.dims()
        if dims and dims[0] > width:
            raise BertforgeError(f"embed: matryoshka dim {dims[0]} is wider than the {width}-dimensional embeddings")
        if dims and width not in dims:
            log.warning("embed: the full %d dimensions are not among the matryoshka dims: they are not trained", width)
        self.text_tokenizer = lowercased(self.tokenizer) if modules.lowercase else self.tokenizer
        return SentenceEncoder(load_pretrained(md), modules)

    # -- the training loop's side ----------------------------------------------------------------------------
    def set_data(self, train_examples: list[EmbedExample], valid_examples: list[EmbedExample]) -> None:
        """Each distinct text tokenized once; examples become indices of their texts."""
        texts = list(dict.fromkeys(t for e in train_examples for t in e.texts))
        if not texts:
            raise BertforgeError("no training features")
        index = {t: i for i, t in enumerate(texts)}
        self.encoded = [e.ids for e in self.text_tokenizer.encode_batch(texts, max_length=self.spec.max_length)]
        self.rows = [tuple(index[t] for t in e.texts) for e in train_examples]
        self.scores = [e.score for e in train_examples]
        self.valid_examples = valid_examples

    def num_train(self) -> int:
        return len(self.rows)

    def size(self, index: int) -> tuple[int, int]:
        return len(self.rows[index]), max(len(self.encoded[t]) for t in self.rows[index])

    def collate(self, indices: list[int], rng: np.random.Generator | None = None) -> dict[str, Tensor]:
        """The batch's distinct texts, and ``columns`` ((C, B): the row of each example's texts)."""
        rows = [self.rows[i] for i in indices]
        distinct = list(dict.fromkeys(t for r in rows for t in r))
        at = {t: k for k, t in enumerate(distinct)}
        ids = [self.encoded[t] for t in distinct]
        batch = encoder_batch(ids, [[0] * len(x) for x in ids], self.tokenizer.pad_id)
        batch["columns"] = torch.tensor([[at[t] for t in r] for r in rows], dtype=torch.long).T.contiguous()
        if self.settings.loss == "cosent":
            batch["scores"] = torch.tensor([self.scores[i] for i in indices], dtype=torch.float32)
        return batch

    def counts(self, batch: dict[str, Tensor]) -> dict[str, int]:
        return {"loss": int(batch["columns"].shape[1])}

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        vectors = model(**{k: batch[k] for k in keys}).float()  # (texts, D)
        return {"loss": self.batch_loss([vectors[c] for c in batch["columns"]], batch["columns"], batch.get("scores"))}

    def distill_outputs(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[list[Soft], None]:
        """The batch's sentence vectors, matched by mean squared error (sentence-transformers' recipe)."""
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return [Soft(model(**{k: batch[k] for k in keys}).float(), "mse")], None

    def label_with(self, examples: list[EmbedExample], predict: Callable[[list], list[dict]]) -> list[EmbedExample]:
        return examples  # (matching the teacher's vectors needs no labels)

    def batch_loss(self, columns: list[Tensor], rows: Tensor, scores: Tensor | None = None) -> Tensor:
        """The task's loss over a batch's columns of embeddings (Matryoshka: summed over the prefixes)."""
        s = self.settings

        def loss(cols: list[Tensor]) -> Tensor:
            if s.loss == "cosent":
                return cosent_loss(cols[0], cols[1], scores, s.scale)
            return mnrl_loss(cols, s.scale, s.symmetric, rows)

        dims = s.dims()
        return matryoshka_loss(loss, columns, dims) if dims else loss(columns)

    def export(self, model: SentenceEncoder, directory: Path) -> None:
        """A sentence-transformers directory; the settings in config.json, the length trained at in its modules."""
        self.spec.extra = dataclasses.asdict(self.settings)
        model.encoder.config.extra["bertforge"] = self.spec.to_dict()
        modules = replace(model.sentence_modules(), max_length=self.spec.max_length)
        save_sentence_transformer(model.encoder, directory, self.tokenizer, modules)

    # -- prediction and metrics -------------------------------------------------------------------------------
    def predict(self, model, examples: list[EmbedExample], progress: bool = False) -> list[dict]:
        """Texts: their embedding. Pairs and triplets: the cosine of the first two (``score``) and, for
        triplets, of the first and third (``negative_score``); unscored ones also the ``rank`` of each
        positive among the positives and negatives of the examples predicted together (1: the nearest)."""
        if not isinstance(model, Embedder):  # the model in training
            modules = replace(model.sentence_modules(), max_length=self.spec.max_length)
            model = Embedder(model.encoder, self.text_tokenizer, modules)
        if examples and isinstance(examples[0], RetrievalSet):
            return [self._retrieve(model, rs, progress) for rs in examples]
        if len({len(e.texts) for e in examples}) > 1:
            raise BertforgeError("give texts or pairs, not both at once")
        texts = list(dict.fromkeys(t for e in examples for t in e.texts))
        vectors = model(texts, max_tokens=self.max_tokens, progress=progress)
        at = {t: i for i, t in enumerate(texts)}
        if all(len(e.texts) == 1 for e in examples):
            return [{"embedding": vectors[at[e.texts[0]]].tolist()} for e in examples]
        unit = F.normalize(torch.from_numpy(vectors).double(), dim=-1)
        rows = torch.tensor([[at[t] for t in e.texts] for e in examples]).T  # (C, N)
        out = [{"score": float(v)} for v in (unit[rows[0]] * unit[rows[1]]).sum(-1)]
        if len(rows) > 2:
            for p, v in zip(out, (unit[rows[0]] * unit[rows[2]]).sum(-1), strict=True):
                p["negative_score"] = float(v)
        if all(e.score is None for e in examples):
            for p, rank in zip(out, _ranks(unit, rows), strict=True):
                p["rank"] = rank
        return out

    def _retrieve(self, model: Embedder, rs: RetrievalSet, progress: bool) -> dict:
        """Each query's corpus ranking, top 100 (as corpus indices)."""
        q = model(rs.queries, normalize=True, max_tokens=self.max_tokens, progress=progress)
        d = model(rs.corpus, normalize=True, max_tokens=self.max_tokens, progress=progress)
        ranked = top_k(q, d, rs.corpus_ids, max(DEPTH, self.candidates))
        if self.reranker is not None:  # retrieve, then rerank: the top candidates re-ordered, the rest after them
            n = self.candidates
            order = self.reranker.rank(rs.queries, [[rs.corpus[j] for j in row[:n]] for row in ranked])
            ranked = [[row[r["index"]] for r in o] + row[n:] for row, o in zip(ranked, order, strict=True)]
        return {"ranked": [row[:DEPTH] for row in ranked]}

    def score(self, predictions: list[dict], examples: list[EmbedExample]) -> dict:
        """Scored pairs: Pearson and Spearman of cosine against the scores (sentence-transformers'
        EmbeddingSimilarityEvaluator); a retrieval set: its ranking metrics (InformationRetrievalEvaluator's);
        else recall@1 and MRR of the positives, and triplet accuracy."""
        if examples and isinstance(examples[0], RetrievalSet):
            return evaluate_rankings(examples[0], predictions[0]["ranked"])
        if all(e.score is not None for e in examples):
            gold, cos = [e.score for e in examples], [p["score"] for p in predictions]
            return {"spearman": metrics.spearman(gold, cos), "pearson": metrics.pearson(gold, cos)}
        ranks = np.asarray([p["rank"] for p in predictions], dtype=np.float64)
        out = {"recall_at_1": float((ranks == 1).mean()), "mrr": float((1 / ranks).mean())}
        if "negative_score" in predictions[0]:
            won = [p["score"] > p["negative_score"] for p in predictions]
            out = {"accuracy": float(np.mean(won)), **out}
        return out

    def metric_names(self, examples: list[EmbedExample]) -> tuple[str, ...]:
        if examples and isinstance(examples[0], RetrievalSet):
            return RETRIEVAL_METRICS
        if examples and all(e.score is not None for e in examples):
            return ("spearman", "pearson")
        return ("accuracy", "recall_at_1", "mrr") if examples and len(examples[0].texts) > 2 else ("recall_at_1", "mrr")


def _score(value: Any, line: int, path: Path, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score) or isinstance(value, bool):
        raise BertforgeError(f"{path}: line {line}: {name!r} is {value!r}, not a number")
    return score


def _ranks(unit: Tensor, rows: Tensor, chunk: int = 1024) -> list[int]:
    """The rank of each example's positive among the distinct candidate texts (positives and negatives)."""
    candidates = torch.unique(rows[1:].reshape(-1))
    ranks: list[int] = []
    for start in range(0, rows.shape[1], chunk):
        anchors, positives = rows[0, start : start + chunk], rows[1, start : start + chunk]
        sims = unit[anchors] @ unit[candidates].T  # (n, candidates)
        own = (unit[anchors] * unit[positives]).sum(-1, keepdim=True)
        beaten = (sims > own) & (candidates[None, :] != positives[:, None])
        ranks += (1 + beaten.sum(1)).tolist()
    return ranks
