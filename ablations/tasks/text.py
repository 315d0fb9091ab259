"""Text tasks, re-exported in one namespace: corpora (:mod:`.corpus`, :mod:`.english`), the shared
WordPiece tokenizer (:mod:`.tokenizer`), masked language modelling (:mod:`.mlm`), the offline
downstream tasks ``docstring_package`` (:mod:`.docstring`) and ``sentiment`` / ``text_classification``
(:mod:`.classification`)."""
from .corpus import (CORPUS_RECIPE, PACKAGES, SHARD_SIZE, VAL_FRACTION, Corpus, Document,  # noqa: F401
                     default_cache_dir, extract_docstrings, load_builtin_corpus, load_corpus, load_hf_corpus,
                     load_local_corpus, split_of, strip_doctests)
from .docstring import DocstringPackage  # noqa: F401
from .mlm import SMALL_PRESET, MaskedLanguageModeling, mask_tokens, pack_sequences  # noqa: F401
from .tokenizer import (CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, TOKENIZER_RECIPE,  # noqa: F401
                        UNK_ID, _bert_text_pipeline, count_words, get_tokenizer, tokenizer_sha256,
                        train_tokenizer, wordpiece_vocabulary)
from .classification import Sentiment, TextClassification  # noqa: F401,E402
