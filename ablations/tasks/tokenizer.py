"""The shared WordPiece tokenizer of the text tasks.

Tokenizer (:func:`get_tokenizer`): a ``tokenizers`` WordPiece tokenizer (Schuster & Nakajima 2012;
Devlin et al. 2019, BERT) with the BERT normalizer (lower-casing, accent stripping) and pre-tokenizer,
special tokens ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, and the post-processor
``[CLS] A [SEP] (B [SEP])``. Its vocabulary is learned offline on the train split by
:func:`wordpiece_vocabulary` (the library trainer's BPE rule, made deterministic: the library's own
trainer gives a different vocabulary in every process), so the tokenizer, like the corpus, is a
deterministic function of the texts and package versions. Cached under ``$MIXERZOO_CACHE`` (default
``~/.cache/mixerzoo``) keyed by corpus hash (with its split) and vocabulary size.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .base import check_int
from .corpus import _atomic_write_bytes, _progress, default_cache_dir, load_corpus

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
TOKENIZER_RECIPE = "wordpiece-bert-v2"


# -------------------------------------------------------------------------------------------- tokenizer
def _bert_text_pipeline():
    """The BERT normalizer (lower-casing, accent stripping) and pre-tokenizer of the tokenizer."""
    from tokenizers import normalizers, pre_tokenizers
    return normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()


def count_words(texts: Iterable[str], length: int | None = None) -> dict[str, int]:
    """How often each word occurs in ``texts``, a word being what the tokenizer's own BERT normalizer
    and pre-tokenizer produce (so training sees exactly the words that encoding will see).
    ``length``: the number of texts, for the progress bar only. O(total characters)."""
    import collections
    normalizer, pre_tokenizer = _bert_text_pipeline()
    counts: collections.Counter = collections.Counter()
    for t in _progress(texts, total=length, desc="count words", unit="doc"):
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
    return dict(counts)


def wordpiece_vocabulary(word_counts: dict[str, int], vocab_size: int,
                         special_tokens: Sequence[str] = SPECIAL_TOKENS, prefix: str = "##") -> list[str]:
    """A WordPiece vocabulary (token list, index = id) learned by byte-pair-encoding merges over words,
    deterministically.

    This is the training rule of the ``tokenizers`` library's ``WordPieceTrainer`` (BPE, Sennrich et al.
    2016, on words spelt with a continuation prefix: ``"word"`` -> ``w ##o ##r ##d``), with token ids
    that do not depend on hash-map iteration order:

    1. ids ``0..len(special_tokens)-1``: ``special_tokens``;
    2. the alphabet: every character of every word as a word-initial token, sorted by code point,
       then ``prefix + c`` for every character ``c`` found after a word's first character, sorted by
       ``c`` (the library numbers these in the random order it meets them: the source of its
       nondeterminism);
    3. merges until the vocabulary has ``vocab_size`` tokens or every word is one token: the adjacent
       pair ``(left, right)`` with the largest count (summed over word occurrences) is merged into
       ``left + right[len(prefix):]``, every occurrence in every word, left to right; ties go to the
       smallest ``(id(left), id(right))`` (as in the library: older tokens first, and among the
       alphabet, code-point order). A merge whose token already exists (the same string reached
       through another pair) adds no token.

    The result is a function of ``word_counts`` (a mapping; its order is irrelevant), ``vocab_size``,
    ``special_tokens`` and ``prefix`` only: the same in every process and on every machine. On the
    built-in corpus it equals the library's vocabulary as a set up to the few low-count ties whose
    order the library decides by its random ids.

    ``word_counts``: word -> number of occurrences (int >= 0; zero counts are absent words).
    Raises ValueError if a count is not a non-negative int or if ``vocab_size`` cannot hold the
    special tokens and the alphabet. Cost: O(number of distinct words x word length) to start, then
    per merge O(distinct words holding the pair x word length + log(heap size)); about 2 s for the
    28,000 distinct words of the built-in corpus and 8,000 tokens.
    """
    import heapq
    check_int("vocab_size", vocab_size, minimum=len(special_tokens) + 1)
    for word, count in word_counts.items():
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
            raise ValueError(f"word_counts must map words to ints >= 0, got {word!r}: {count!r}")
    word_list = sorted(w for w, c in word_counts.items() if c > 0 and w)
    freq = [word_counts[w] for w in word_list]
    initial = sorted({ch for w in word_list for ch in w})
    continuation = sorted({prefix + ch for w in word_list for ch in w[1:]})
    vocab = list(special_tokens) + initial + continuation
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"special_tokens must differ from each other and from single characters, "
                         f"got {list(special_tokens)!r}")
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} cannot hold the {len(vocab)} tokens the corpus needs before any "
                         f"merge ({len(special_tokens)} special, {len(initial)} characters, {len(continuation)} "
                         f"'{prefix}' continuations); use vocab_size >= {len(vocab)}")
    symbols = [[w[0]] + [prefix + ch for ch in w[1:]] for w in word_list]
    pair_count: dict[tuple[str, str], int] = {}
    pair_words: dict[tuple[str, str], set[int]] = {}
    for i, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:]):
            pair_count[pair] = pair_count.get(pair, 0) + freq[i]
            pair_words.setdefault(pair, set()).add(i)
    # heap keys (-count, id(left), id(right)): tuples compare in exactly the merge order of rule 3;
    # entries whose count is out of date are skipped when popped (lazy deletion)
    token_id = {t: i for i, t in enumerate(vocab)}
    heap = [(-c, token_id[pair[0]], token_id[pair[1]], pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    cut = len(prefix)
    while len(vocab) < vocab_size and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue
        left, right = pair
        merged = left + right[cut:]
        if merged not in token_id:
            token_id[merged] = len(vocab)
            vocab.append(merged)
        delta: dict[tuple[str, str], int] = {}
        for i in sorted(pair_words.pop(pair)):
            old = symbols[i]
            new, j = [], 0
            while j < len(old):  # left to right, non-overlapping (as in "a a a" -> "aa a")
                if j + 1 < len(old) and old[j] == left and old[j + 1] == right:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            symbols[i] = new
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for p in old_pairs:
                delta[p] = delta.get(p, 0) - freq[i]
            for p in new_pairs:
                delta[p] = delta.get(p, 0) + freq[i]
            for p in set(old_pairs) - set(new_pairs):
                if p != pair:
                    pair_words[p].discard(i)
            for p in new_pairs:
                pair_words.setdefault(p, set()).add(i)
        for p, d in delta.items():
            if d:
                c = pair_count.get(p, 0) + d
                if c > 0:
                    pair_count[p] = c
                    heapq.heappush(heap, (-c, token_id[p[0]], token_id[p[1]], p))
                else:
                    pair_count.pop(p, None)
                    pair_words.pop(p, None)
        pair_count.pop(pair, None)
    return vocab


def train_tokenizer(texts: Iterable[str], vocab_size: int, length: int | None = None):
    """Train a WordPiece ``tokenizers.Tokenizer`` (BERT normalizer and pre-tokenizer, the special tokens
    of ``SPECIAL_TOKENS`` at ids 0..4, ``[CLS] A [SEP] (B [SEP])`` post-processor, WordPiece decoder).

    The vocabulary is :func:`wordpiece_vocabulary` of :func:`count_words`: the training rule of
    ``tokenizers.trainers.WordPieceTrainer`` with deterministic token ids. The trainer itself is not
    used: it numbers the ``##`` continuation characters in the iteration order of a Rust hash map,
    randomly seeded in every process (no environment variable fixes it; ``RAYON_NUM_THREADS=1`` does
    not help), and breaks ties between equal-count merges by those ids, so two runs on the same texts
    give different token ids and, at larger sizes, different token sets. Encoding is the library's
    WordPiece model (greedy longest-match-first, Wu et al. 2016; words over 100 characters ->
    ``[UNK]``). The vocabulary has at most ``vocab_size`` entries (fewer if the texts have fewer
    distinct subwords). ``length``: number of texts, for the progress bar only.
    Cost: about 8 s for the built-in corpus (15 MB, 3.4 M words) at 8,192 tokens, 3/4 of it counting words.
    Raises ValueError if ``vocab_size`` cannot hold the special tokens and the alphabet."""
    from tokenizers import Tokenizer, decoders, models, processors
    check_int("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
    vocab = wordpiece_vocabulary(count_words(texts, length), vocab_size)
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]",
                                     continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer = _bert_text_pipeline()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # never split, skipped by decode(skip_special_tokens=True)
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"tokenizer put {name} at id {tok.token_to_id(name)}, expected {i}")
    if tok.get_vocab_size() > vocab_size:
        raise RuntimeError(f"WordPiece produced {tok.get_vocab_size()} tokens, more than vocab_size={vocab_size}")
    return tok


def tokenizer_sha256(tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON serialization (recorded with results to pair pretraining and fine-tuning)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def get_tokenizer(vocab_size: int = 8192, corpus="builtin", cache_dir: str | os.PathLike | None = None,
                  **corpus_options):
    """The WordPiece tokenizer for ``corpus`` (a spec for :func:`load_corpus` or a :class:`Corpus`),
    trained on its train split on first use and cached at
    ``<cache_dir>/tokenizers/<recipe>-<vocab_size>-<corpus split_sha256[:20]>.json`` (the corpus hash
    extended by its train/val assignment, since only the train split is used).
    Returns a ``tokenizers.Tokenizer``. Cost: about 1 s per 2 MB of text to train, then a file read."""
    from tokenizers import Tokenizer
    check_int("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
    cache_dir = Path(cache_dir or default_cache_dir())
    corpus = load_corpus(corpus, cache_dir=cache_dir, **corpus_options)
    path = cache_dir / "tokenizers" / f"{TOKENIZER_RECIPE}-{vocab_size}-{corpus.split_sha256[:20]}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    train = corpus.split("train")
    if not train:
        raise ValueError(f"corpus {corpus.spec.get('corpus')!r} has no training documents to train a tokenizer on")
    tok = train_tokenizer((d.text for d in train), vocab_size, length=len(train))
    _atomic_write_bytes(path, tok.to_str().encode("utf-8"))
    return tok


def _encode_texts(tokenizer, texts: list[str], desc: str) -> list[list[int]]:
    """Token ids of each text without special tokens, in batches (for a progress bar)."""
    out: list[list[int]] = []
    step = 2048
    for start in _progress(range(0, len(texts), step), desc=desc, unit="batch"):
        out += [e.ids for e in tokenizer.encode_batch(texts[start:start + step], add_special_tokens=False)]
    return out
