"""A BERT encoder read back out of an exported ONNX graph (sentence-transformers' graphs ending in mean
pooling, such as paraphrase-MiniLM-L3-v2's), into a model directory.

Embeddings, LayerNorms and biases keep their Hugging Face names in such a graph; the weight matrices
are anonymous ``onnx::MatMul_N`` initialisers stored [in, out], so each is named through the bias of
the ``Add`` that consumes its product, and transposed for ``nn.Linear``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import BertConfig
from .errors import BertforgeError


def graph_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The graph's encoder weights under their Hugging Face names (``encoder.layer.0.output.dense.weight``)."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # a missing or corrupt file: one line
        raise BertforgeError(f"{path}: cannot read an ONNX graph ({type(e).__name__})") from None
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumer = {x: n for n in graph.node for x in n.input}
    state: dict[str, torch.Tensor] = {}
    for name, value in inits.items():
        if name.startswith("onnx::MatMul"):
            continue
        state[_hf_name(name)] = torch.from_numpy(value.copy())
    for node in graph.node:
        matrix = next((x for x in node.input if x.startswith("onnx::MatMul") and x in inits), None)
        if node.op_type != "MatMul" or matrix is None:
            continue
        add = consumer.get(node.output[0])
        bias = next((x for x in add.input if x in inits and x.endswith(".bias")), None) if add is not None else None
        if add is None or add.op_type != "Add" or bias is None:
            raise BertforgeError(f"{path}: weight {matrix} is not followed by a bias Add: not a BERT graph")
        state[_hf_name(bias).removesuffix("bias") + "weight"] = torch.from_numpy(inits[matrix].T.copy())
    if "embeddings.word_embeddings.weight" not in state:
        raise BertforgeError(f"{path}: no embeddings.word_embeddings.weight: not a BERT graph")
    return state


def _hf_name(name: str) -> str:
    """'model.0.auto_model.encoder.layer.0...' (a sentence-transformers module path) -> 'encoder.layer.0...'."""
    return name.split("auto_model.", 1)[-1]


def graph_config(state: dict[str, torch.Tensor], heads: int) -> BertConfig:
    """The BERT shape the weights imply (head count is not in the weights: ``heads``)."""
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
    )


def convert(
    path: str | Path, tokenizer: str | Path, out: str | Path, heads: int = 12, max_length: int | None = 128
) -> Path:
    """``path``'s encoder as a sentence-transformers directory at ``out``: mean pooling, not normalised (what
    the graph computes), with ``tokenizer``'s vocabulary (a directory or a registry name)."""
    from .checkpoint import load_state
    from .infer import save_sentence_transformer
    from .model import BertModel
    from .sentence import Pooling, SentenceModules
    from .tokenizer import Tokenizer

    state = graph_weights(path)
    config = graph_config(state, heads)
    tok = Tokenizer.from_pretrained(tokenizer)
    if max(tok.get_vocab().values()) + 1 > config.vocab_size:
        raise BertforgeError(f"{tokenizer}: its vocabulary is larger than the graph's {config.vocab_size} embeddings")
    torch.manual_seed(0)  # (the pooler, which the graph lacks and mean pooling never reads)
    model = BertModel(config)
    load_state(model, state, str(path))
    return save_sentence_transformer(model, out, tok, SentenceModules((Pooling(),), max_length=max_length))
