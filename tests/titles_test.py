"""The title tokenizer: its vocabulary and ids, the same on every run."""

import collections
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np

from mmrec.data import titles

# Every word and character equally frequent: many merges tie, which is where
# the library's own trainer (hash-map order) differed from run to run.
TITLES = [f'{en} {zh} {en}s' for en in ('red', 'blue', 'wool', 'hat', 'jeans',
                                        'linen', 'silk', 'dress')
          for zh in ('红色', '棉衬衫', '连衣裙', '帽子')]


def _reference(counts, vocab_size):
  """`titles._vocab` as plain BPE: all pair counts afresh after each merge."""
  words = sorted(counts)
  tokens = [titles.PAD, titles.UNK] + sorted({c for w in words for c in w})
  tokens += sorted({'##' + c for w in words for c in w[1:]})
  vocab = {t: i for i, t in enumerate(tokens)}
  pieces = [[vocab[w[0]]] + [vocab['##' + c] for c in w[1:]] for w in words]
  while len(vocab) < vocab_size:
    pairs = collections.Counter()
    for w, p in zip(words, pieces):
      for pair in zip(p, p[1:]):
        pairs[pair] += counts[w]
    if not pairs:
      break
    (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    token = tokens[a] + tokens[b][2:]
    if token not in vocab:
      vocab[token] = len(tokens)
      tokens.append(token)
    pieces = [titles._merge(p, a, b, vocab[token]) for p in pieces]
  return vocab


class TrainTest(absltest.TestCase):

  def test_same_titles_same_tokenizer(self):
    for vocab_size in (40, 70, 1000):  # cut among tied merges; all merges
      first = titles.train(TITLES, vocab_size)
      ids = titles.encode(first, TITLES, 8)
      for _ in range(5):
        tok = titles.train(iter(TITLES), vocab_size)
        self.assertEqual(tok.to_str(), first.to_str(), f'vocab {vocab_size}')
        np.testing.assert_array_equal(titles.encode(tok, TITLES, 8), ids)

  def test_same_file_in_another_process(self):
    here, there = tempfile.mkdtemp(), tempfile.mkdtemp()
    titles.save(titles.train(TITLES, 70), here)
    root = os.path.dirname(os.path.dirname(os.path.abspath(titles.__file__)))
    # The titles travel as JSON: the other process imports no test module.
    subprocess.run([sys.executable, '-c', (
        'import json, sys; sys.path.insert(0, sys.argv[1]); '
        'from mmrec.data import titles; '
        'titles.save(titles.train(json.loads(sys.argv[3]), 70), sys.argv[2])'),
                    root, there, json.dumps(TITLES)], check=True,
                   env=dict(os.environ, PYTHONPATH=root))
    with open(os.path.join(here, titles.FILE), 'rb') as f:
      mine = f.read()
    with open(os.path.join(there, titles.FILE), 'rb') as f:
      self.assertEqual(f.read(), mine)

  def test_most_frequent_pair_first_then_smallest_ids(self):
    # ab x3 > ac x1; ac, xy and zy tie: a (id 2) before x (5) before z (7).
    tok = titles.train(['AB ab ab ac', 'xy zy'], 12)
    vocab = tok.get_vocab()
    self.assertEqual(
        sorted(vocab, key=vocab.get),
        ['[PAD]', '[UNK]', 'a', 'b', 'c', 'x', 'y', 'z', '##b', '##c', '##y',
         'ab'])
    tok = titles.train(['AB ab ab ac', 'xy zy'], 14)
    self.assertEqual(tok.token_to_id('xy'), 13)
    self.assertIsNone(tok.token_to_id('zy'))
    # abc: ab ##c; 狗 unknown; 0-padded.
    np.testing.assert_array_equal(
        titles.encode(tok, ['ab ac abc 狗'], 7), [[11, 12, 11, 9, 1, 0, 0]])

  def test_merges_match_plain_bpe(self):
    rng = np.random.default_rng(0)
    for alphabet in ('abcde', 'ab猫狗'):
      counts = collections.Counter()
      for _ in range(50):
        counts[''.join(rng.choice(list(alphabet), rng.integers(1, 9)))] += (
            int(rng.integers(1, 4)))
      for vocab_size in (10, 30, 80, 400):
        self.assertEqual(titles._vocab(counts, vocab_size),
                         _reference(counts, vocab_size))


if __name__ == '__main__':
  absltest.main()
