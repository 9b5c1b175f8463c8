"""Title tokenizer of a converted dataset: trained locally, saved with it.

A WordPiece model from the `tokenizers` library, trained on the titles of
the training split only (no test text leaks into the vocabulary), saved as
`tokenizer.json` in the dataset. BERT's normaliser puts spaces around CJK
characters, so Chinese titles become one token per character (or merged
pieces) while English splits on words and punctuation. Ids: 0 = padding
([PAD]), 1 = unknown ([UNK]); titles are truncated / right-padded to a fixed
length, the layout of the world's titles.
"""

import os

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import trainers

FILE = 'tokenizer.json'
PAD, UNK = '[PAD]', '[UNK]'


def train(texts, vocab_size):
  """A WordPiece tokenizer trained on `texts` (an iterable of str)."""
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
  tok.train_from_iterator(texts, trainer)
  if tok.token_to_id(PAD) != 0:
    raise AssertionError('the padding token must have id 0')
  return tok


def encode(tok, texts, length):
  """(N, length) int32 ids, 0-padded on the right."""
  out = np.zeros((len(texts), length), np.int32)
  for i, enc in enumerate(tok.encode_batch(list(texts))):
    ids = enc.ids[:length]
    out[i, :len(ids)] = ids
  return out


def save(tok, directory):
  tok.save(os.path.join(directory, FILE))


def load(directory):
  return tokenizers.Tokenizer.from_file(os.path.join(directory, FILE))
