"""bertforge: BERT from scratch in PyTorch.

    >>> import bertforge
    >>> model = bertforge.load_pretrained("minilm-l6")
    >>> tok = bertforge.Tokenizer.from_pretrained("minilm-l6")
"""

from .checkpoint import load_pretrained, save_pretrained
from .config import BertConfig
from .errors import BertforgeError
from .heads import BertWithHead
from .infer import Embedder, embed
from .model import BertModel, EncoderOutput
from .tokenizer import Tokenizer, train_vocab

__all__ = [
    "BertConfig",
    "BertModel",
    "BertWithHead",
    "BertforgeError",
    "Embedder",
    "EncoderOutput",
    "Tokenizer",
    "embed",
    "load_pretrained",
    "save_pretrained",
    "train_vocab",
]
__version__ = "0.1.0"
