"""Title tokenizer of a converted dataset: trained locally, saved with it.

A WordPiece model of the `tokenizers` library (its vocabulary learnt here,
the same on every run), trained on the titles of the items of the training
split and the text queries of its search sessions (no test text leaks into
the vocabulary), saved as `tokenizer.json` in the dataset; or a
user-supplied tokenizer.json (`from_file`), copied there. BERT's normaliser puts spaces around CJK characters, so Chinese
titles become one token per character (or merged pieces) while English
splits on words and punctuation. Ids: 0 = padding ([PAD]), 1 = unknown
([UNK]); titles are truncated / right-padded to a fixed length, the layout
of the world's titles.
"""

import collections
import heapq
import os

from absl import logging
import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers

FILE = 'tokenizer.json'
PAD, UNK = '[PAD]', '[UNK]'
PREFIX = '##'  # WordPiece's mark of a piece that continues a word
PAD_NAMES = (PAD, '<pad>')  # what id 0 of a user-supplied tokenizer may be


def train(texts, vocab_size):
  """A WordPiece tokenizer trained on `texts` (an iterable of str).

  The vocabulary is built here (`_vocab`), not by the library's
  WordPieceTrainer: that trainer numbers the word-continuing pieces ('##x')
  in the iteration order of a hash map seeded at random in every process,
  and breaks ties between equally frequent merges by those numbers, so two
  runs on the same titles gave different ids and even different
  vocabularies (whatever RAYON_NUM_THREADS or TOKENIZERS_PARALLELISM say).
  Words are still split by the library's own normaliser and pre-tokeniser,
  the ones that encode titles later.
  """
  normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, lowercase=True)
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  counts = collections.Counter()
  for text in texts:
    counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(
        normalizer.normalize_str(text)))
  tok = tokenizers.Tokenizer(models.WordPiece(
      _vocab(counts, vocab_size), unk_token=UNK,
      continuing_subword_prefix=PREFIX))
  tok.normalizer = normalizer
  tok.pre_tokenizer = pre_tokenizer
  tok.decoder = decoders.WordPiece(prefix=PREFIX)
  tok.add_special_tokens([PAD, UNK])
  if tok.token_to_id(PAD) != 0:
    raise AssertionError('the padding token must have id 0')
  return tok


def _vocab(counts, vocab_size):
  """{token: id} of the merges the library's WordPieceTrainer makes.

  As there (BPE on word counts): [PAD], [UNK], the characters, the
  continuing '##' characters, then the most frequent adjacent pair is merged
  into a new token until there are `vocab_size`. Unlike there, the numbering
  is fixed (characters by code point) before it breaks ties (equally
  frequent pairs: the one of the smallest ids first, as there), so the same
  counts always give the same ids.
  """
  words = sorted(counts)
  tokens = [PAD, UNK] + sorted({c for w in words for c in w})
  tokens += sorted({PREFIX + c for w in words for c in w[1:]})
  vocab = {t: i for i, t in enumerate(tokens)}
  pieces = [[vocab[w[0]]] + [vocab[PREFIX + c] for c in w[1:]] for w in words]
  freq = [counts[w] for w in words]
  pairs = collections.Counter()  # (id, id) -> occurrences in the corpus
  where = collections.defaultdict(set)  # (id, id) -> words that may hold it
  for i, p in enumerate(pieces):
    for pair in zip(p, p[1:]):
      pairs[pair] += freq[i]
      where[pair].add(i)
  # Entries may overstate a pair's count (corrected when popped), never
  # understate it, so the first exact entry popped is the most frequent pair;
  # equal entries are equal tuples, so the pops do not depend on the order of
  # the pushes (nor on set order).
  heap = [(-n, a, b) for (a, b), n in pairs.items()]
  heapq.heapify(heap)
  while heap and len(vocab) < vocab_size:
    n, a, b = heapq.heappop(heap)
    if -n != pairs[a, b]:
      if pairs[a, b] > 0:
        heapq.heappush(heap, (-pairs[a, b], a, b))
      continue
    token = tokens[a] + tokens[b][len(PREFIX):]  # b continues a word: '##..'
    if token not in vocab:
      vocab[token] = len(tokens)
      tokens.append(token)
    new = vocab[token]
    grown = set()  # only pairs with the new token can have grown
    for i in where.pop((a, b)):
      p = pieces[i]
      for pair in zip(p, p[1:]):
        pairs[pair] -= freq[i]
      p = pieces[i] = _merge(p, a, b, new)
      for pair in zip(p, p[1:]):
        pairs[pair] += freq[i]
        where[pair].add(i)
        if new in pair:
          grown.add(pair)
    for pair in grown:
      heapq.heappush(heap, (-pairs[pair], *pair))
  return vocab


def _merge(pieces, a, b, new):
  """`pieces` with every (a, b), left to right, replaced by `new`."""
  out, i = [], 0
  while i < len(pieces):
    if i + 1 < len(pieces) and pieces[i] == a and pieces[i + 1] == b:
      out.append(new)
      i += 2
    else:
      out.append(pieces[i])
      i += 1
  return out


def encode(tok, texts, length):
  """(N, length) int32 ids, 0-padded on the right."""
  out = np.zeros((len(texts), length), np.int32)
  for i, enc in enumerate(tok.encode_batch(list(texts))):
    ids = enc.ids[:length]
    out[i, :len(ids)] = ids
  return out


# A text is "mostly unknown" when over half its tokens are the unknown
# token; the converter warns when more than this share of texts are.
UNKNOWN_WARN_SHARE = 0.05


def unknown_id(tok):
  """The id of the tokenizer's unknown token (None if it has none)."""
  name = getattr(tok.model, 'unk_token', None) or UNK
  return tok.token_to_id(name)


def mostly_unknown(tok, ids):
  """(N,) bool: rows of (N, T) token ids (0 = padding) with more than half
  of their tokens unknown."""
  unk = unknown_id(tok)
  if unk is None or not len(ids):
    return np.zeros(len(ids), bool)
  real = (ids != 0).sum(1)
  return (ids == unk).sum(1) * 2 > real


def warn_unknown(tok, total, unknown, what):
  """Logs a warning when over UNKNOWN_WARN_SHARE of `total` texts are
  mostly unknown tokens: their vectors say almost nothing, silently."""
  if total and unknown > UNKNOWN_WARN_SHARE * total:
    logging.warning(
        '%d of %d %s (%.0f%%) are mostly unknown tokens to the tokenizer: '
        'its vocabulary does not cover their words (train it on them, '
        'or give convert.tokenizer one that does)', unknown, total, what,
        100 * unknown / total)


def from_file(path, source='convert.tokenizer'):
  """A user-supplied tokenizer.json (`tokenizers` format), checked: id 0
  must be the padding token (titles are 0-padded)."""
  try:
    tok = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # the library raises plain Exceptions
    raise ValueError(f'{source} = {path!r}: not a readable tokenizer.json '
                     f'({e})') from e
  pad = tok.id_to_token(0)
  if pad not in PAD_NAMES:
    raise ValueError(f'{source} = {path!r}: id 0 is {pad!r}; it must be the '
                     f'padding token (one of {PAD_NAMES}): titles and queries '
                     'are 0-padded')
  return tok


def save(tok, directory):
  tok.save(os.path.join(directory, FILE))


def load(directory):
  return tokenizers.Tokenizer.from_file(os.path.join(directory, FILE))
