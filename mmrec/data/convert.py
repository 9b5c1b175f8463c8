"""Bring your own data: Parquet tables -> a dataset in mmrec's format.

Input, one directory (docs/data_format.md, "Your own data"):
  impressions.parquet, or impressions/*.parquet shards (read in name order;
  without them items.parquet and a search log make a pre-training-only
  dataset: catalogue_scan.py):
    user, item   ids: integers or strings, any values (remapped)
    label        0 / 1 (1 = click)
    time         epoch seconds, a timestamp or date, or an ISO-8601 string;
                 or instead `split` ('train' / 'validation' / 'test') for
                 data shipped split
    history      optional list of item ids, oldest first: the behaviours
                 before this impression (else built from earlier clicks)
  items.parquet (optional): item, optional `title` (text) and `image` (a
    path relative to the directory); every other column is a categorical
    field (integer or string) or, when a list, a bag (genres, tags)
  users.parquet (optional): user + categorical fields / bags (the CTR
    model embeds every one, as the items')
  vectors.parquet (optional): item, vector (list of numbers): shipped item
    vectors, written as the dataset's item_vectors.npz
  search.parquet (optional): search -> purchase sessions for pre-training
    (search_sessions.py)
  captions.parquet (optional): image (a path), caption (text): generic
    (image, caption) pairs, CLIP-O's training data (and so CLIP-E's start)
  candidates.parquet (optional): item: the candidates held-out retrieval
    ranks (else the whole catalogue; retrieval_eval.py)

What the conversion does:
  * days: day = whole days since midnight (UTC) of the first impression; the
    last `test_days` days are the test split, the `validation_days` before
    them the validation day(s) (held out of training by the CTR job's
    `--config.validation`); with split='share' instead the fewest last days
    holding `test_share` of the impressions, and the fewest days before them
    holding `validation_share` (a log thinning out towards its end). With
    `split` instead of time: train = day 0, validation (if any) = day 1,
    test = the day after. A span over `max_days` days (one time in
    milliseconds among seconds) or a test split with fewer than
    `min_test_users` users who both clicked and did not is an error naming
    the outlier row (0 = allow it).
  * ids: 0 is reserved for "rare or unknown" (users and items), real ids run
    1..N in sorted order of the raw ids. A user or item with fewer than
    `min_count` occurrences in the training days (impressions, and history
    entries for items) maps to 0, except items never in a training row: the
    new items (shown on a later day) and the items of items.parquet never
    shown, kept for the content route (id_maps.py).
  * histories: right-aligned `seq_item` (L = seq_len) + `seq_len` as the
    world's; built when not given from the user's clicks strictly before the
    impression's time (earlier the same day too; a click at the same second
    is not yet seen), oldest first. Data shipped split has no time: there,
    the clicks of earlier splits (the world has day resolution alike: day
    d's clicks enter day d + 1).
  * items: launch_day = the first day an item was shown (new items:
    launch_day >= first test day); categorical values remapped to 1..V-1 by
    sorted value (0 = missing); bags to fixed width `max_bag`; titles
    tokenised by a WordPiece tokenizer trained on the titles of the items of
    the training days and the training search sessions' text queries, or
    the user's `tokenizer` (titles.py; a warning when many titles or
    queries are mostly unknown tokens); images read, converted to RGB and
    resized to `image_size` (transparency composited on `image_background`,
    white by default).
  * streaming: impressions are read in chunks of `chunk_rows`, never whole:
    the time column alone (days), then every column once (counts, clicks).
    That pass keeps what the dataset stores of each row (ids, label, day and
    the kept end of its history) in a scratch file per split inside the
    dataset directory, from which the rows are written (impression_scan.py);
    items and users (catalogue-sized) are read whole (catalogue_tables.py).
The dataset is built aside and renamed into place (`dataset_job.py`).
"""

import dataclasses
import os
import tempfile

from absl import logging
import numpy as np

from mmrec.data import builders
from mmrec.data import catalogue_scan
from mmrec.data import catalogue_tables
from mmrec.data import columns
from mmrec.data import images
from mmrec.data import impression_scan
from mmrec.data import manifest as manifest_lib
from mmrec.data import search_sessions
from mmrec.data import titles

ITEM_RESERVED = ('item', 'title', 'image')


@dataclasses.dataclass(frozen=True)
class Options:
  """Conversion settings (config.convert of experiments/configs/data.py)."""
  name: str = 'parquet'
  source: str = ''
  # 'days': the last test_days days test, validation_days before them;
  # 'share': the fewest last days holding test_share of the impressions,
  # then validation_share (impression_scan.split_days).
  split: str = 'days'
  test_days: int = 1
  validation_days: int = 1
  test_share: float = 0.1
  validation_share: float = 0.1
  min_count: int = 1
  seq_len: int = 50
  # > 0: also store the last `long_seq_len` behaviours (`long_seq_item`,
  # `long_seq_len`): SimTier over a long history and GSU retrieval
  # (config.retrieve_top_k), the MUSE code's 1000-long setting.
  long_seq_len: int = 0
  image_size: int = 32
  # What transparent pixels are composited on (RGB; images.py).
  image_background: tuple = images.WHITE
  title_length: int = 16
  vocab_size: int = 8000
  max_bag: int = 8
  max_hard_negatives: int = 3  # slots per search session (search.parquet)
  # '' = train a WordPiece tokenizer; else a tokenizer.json to use (titles.
  # from_file): its vocabulary size replaces vocab_size.
  tokenizer: str = ''
  chunk_rows: int = 65536
  # Plausibility (impression_scan.py); 0 turns a check off.
  max_days: int = 36525
  min_test_users: int = 1
  # Item categorical fields the behaviours carry too (a prefix of the item
  # fields in column order); None = the first item field, if any.
  seq_features: tuple | None = None
  # [leaf, top] fields for id_stats' category shares; None = the first.
  category_fields: tuple | None = None
  # An item bag standing in for the category when there is no categorical
  # item field (MovieLens genres): id_stats' shares and the @ids control
  # use it. None = the first item bag then; '' = none.
  category_bag: str | None = None

  @classmethod
  def from_config(cls, c):
    d = {f.name: c[f.name] for f in dataclasses.fields(cls) if f.name in c}
    for k in ('seq_features', 'category_fields'):
      if d.get(k) is not None:
        d[k] = tuple(d[k])
    if 'image_background' in d:
      d['image_background'] = images.check_background(d['image_background'])
    return cls(**d)


class Converter:
  """One conversion of `source_dir` (see the module docstring)."""

  def __init__(self, source_dir, options):
    self.src = source_dir
    self.opt = options
    # No impression log: a catalogue and a search log, for pre-training.
    self.scan = (catalogue_scan.CatalogueScan(source_dir, options)
                 if catalogue_scan.catalogue_only(source_dir) else
                 impression_scan.ImpressionScan(source_dir, options))

  # --- Catalogue tables -------------------------------------------------

  def _title_texts(self, raw_titles, ids, keep, num_items, path):
    """(every item's title, '' without one; the training days' titles)."""
    if len(keep) and not keep.any():
      raise columns.InputError(catalogue_tables.unmatched(
          path, 'item', self.scan.items) + ' (so no item has a title)')
    text = np.full(num_items, '', dtype=object)
    v = raw_titles
    text[ids[keep]] = [s if isinstance(s, str) else '' for s in v[keep]]
    trained = self.scan.items(self.scan.trained_items)
    corpus = [t for t in text[np.unique(trained[trained > 0])] if t]
    if not corpus:
      raise columns.InputError(f'{self.src}: items.parquet has a title column '
                               'but no item of the training days has a title')
    return text, corpus

  def _tokenizer(self, corpus, directory):
    """The user's `tokenizer`, or one trained on `corpus` (the training
    days' titles, the training search queries, the captions), saved."""
    if self.opt.tokenizer:
      tok = titles.from_file(self.opt.tokenizer)
    else:
      tok = titles.train([t for t in corpus if t], self.opt.vocab_size)
    titles.save(tok, directory)
    return tok

  def _encode(self, tok, texts, what, rows=None):
    """`texts` tokenised; a warning when many of them (of `rows`: the
    listed items) are mostly unknown tokens."""
    encoded = titles.encode(tok, list(texts), self.opt.title_length)
    told = encoded if rows is None else encoded[rows]
    titles.warn_unknown(tok, len(told), int(titles.mostly_unknown(
        tok, told).sum()), what)
    return encoded

  def _captions(self):
    """(path, image paths, caption texts) of captions.parquet, or None."""
    paths = columns.table_files(self.src, 'captions', required=False,
                                shards=False)
    if not paths:
      return None
    t = columns.read_all(paths[0], ['image', 'caption'])
    image = np.asarray(t.column('image').to_pylist(), object)
    text = t.column('caption').to_pylist()
    for name, values in (('image', image), ('caption', text)):
      bad = [i for i, x in enumerate(values) if not isinstance(x, str) or not x]
      if bad:
        raise columns.InputError(
            f'{paths[0]}, column {name!r}, row {bad[0]}: {values[bad[0]]!r}, '
            'expected a non-empty string (every caption pairs an image path '
            'with its text)')
    if not len(text):
      raise columns.InputError(f'{paths[0]}: no rows')
    return paths[0], image, text

  def _images(self, raw_paths, ids, keep, num_items, path):
    out = np.zeros((num_items, self.opt.image_size, self.opt.image_size, 3),
                   np.uint8)
    rows = np.flatnonzero(keep)
    out[ids[rows]] = images.read_many(self.src, raw_paths[rows],
                                      self.opt.image_size, path, 'image', rows,
                                      self.opt.image_background)
    return out

  def _category_bag(self, cat_fields, bags):
    if self.opt.category_bag is not None:
      if self.opt.category_bag and self.opt.category_bag not in bags:
        raise columns.InputError(
            f'convert.category_bag={self.opt.category_bag!r}: not a bag of '
            f'{self.src}/items.parquet (bags: {bags})')
      return self.opt.category_bag or None
    return bags[0] if bags and not cat_fields else None

  # --- Everything ---------------------------------------------------------

  def write(self, directory):
    """Writes the dataset (tables, tokenizer, vectors, manifest last)."""
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.scratch-',
                                     dir=directory) as scratch:
      m = self._write(directory, scratch)
    manifest_lib.write(directory, m)
    return m

  def _write(self, directory, scratch):
    """Everything but the manifest, which it returns."""
    scan = self.scan
    scan.scan_days()
    scan.scan_ids(scratch, catalogue_tables.item_keys(self.src))
    items, icats, ibags, iraw, ipath = catalogue_tables.read(
        self.src, 'items', 'item', scan.items, scan.kinds, self.opt.max_bag,
        ITEM_RESERVED)
    if scan.has_impressions:
      users, ucats, ubags, _, _ = catalogue_tables.read(
          self.src, 'users', 'user', scan.users, scan.kinds, self.opt.max_bag)
    else:  # no CTR data: user fields have nothing to serve
      users, ucats, ubags = {'user_id': np.zeros(1, np.int32)}, {}, {}
      if columns.table_files(self.src, 'users', required=False):
        logging.warning('%s: users.parquet is not read: without impressions '
                        'the dataset is for pre-training, which reads no user '
                        'fields', self.src)
    items['launch_day'] = scan.launch_day
    text = image_size = tok = None
    # The search log's first pass and the captions before the tokenizer:
    # their training texts are part of its corpus.
    search = search_sessions.convert(scan, 'title' in iraw)
    caps = self._captions()
    corpus = []
    if 'title' in iraw:
      title_text, corpus = self._title_texts(*iraw['title'], len(scan.items),
                                             ipath)
    if corpus or caps:
      tok = self._tokenizer(
          corpus + (search.train_texts if search else []) +
          (caps[2] if caps else []), directory)
      text = {'tokenizer': titles.FILE, 'vocab_size': tok.get_vocab_size(),
              'length': self.opt.title_length}
    if 'title' in iraw:
      _, ids, keep = iraw['title']
      items['title'] = self._encode(tok, title_text, 'item titles',
                                    ids[keep])
    if 'image' in iraw:
      items['image'] = self._images(*iraw['image'], len(scan.items), ipath)
      image_size = self.opt.image_size
    vectors = catalogue_tables.vectors(self.src, scan.kinds, scan.items,
                                       directory)
    candidates = catalogue_tables.candidates(self.src, scan.kinds, scan.items,
                                             directory)
    if search:
      search.tok = tok
    tables = [
        (builders.Items, {'catalogue': items}, None),
        (builders.Users, {'catalogue': users}, None),
    ]
    if scan.has_impressions:
      tables.append((builders.Impressions, {
          s: (lambda s=s: scan.impressions(s)) for s in ('train', 'test')},
                     scan.impression_example()))
    if search:
      tables.append((builders.Search, search.splits, search.example))
    if caps:
      captions = {'image': images.read_many(
          self.src, caps[1], self.opt.image_size, caps[0], 'image',
          background=self.opt.image_background),
                  'caption': self._encode(tok, caps[2], 'captions')}
      tables.append((builders.Captions, {'train': captions}, None))
    builders.write_tables(directory, tables)
    names = list(icats)
    seq = (self.opt.seq_features if self.opt.seq_features is not None
           else names[:1])
    cat_fields = (self.opt.category_fields
                  if self.opt.category_fields is not None else names[:1])
    m = manifest_lib.Manifest(
        name=self.opt.name, source=self.opt.source or self.src,
        num_users=len(scan.users), num_items=len(scan.items),
        num_days=scan.num_days, first_test_day=scan.first_test_day,
        validation_days=scan.validation_days,
        tables={
            manifest_lib.ITEMS: {'fields': list(items),
                                 'splits': {'catalogue': len(scan.items)}},
            manifest_lib.USERS: {'fields': list(users),
                                 'splits': {'catalogue': len(scan.users)}},
            **({manifest_lib.IMPRESSIONS: {
                'fields': list(scan.impression_example()),
                'splits': dict(scan.rows)}} if scan.has_impressions else {}),
            **({manifest_lib.SEARCH: {
                'fields': list(search.example),
                'splits': dict(search.counts)}} if search else {}),
            **({manifest_lib.CAPTIONS: {
                'fields': ['image', 'caption'],
                'splits': {'train': len(caps[2])}}} if caps else {})},
        categorical={manifest_lib.ITEMS: icats, manifest_lib.USERS: ucats},
        bags={manifest_lib.ITEMS: ibags, manifest_lib.USERS: ubags},
        ctr={'user_features': list(ucats), 'item_features': names,
             'seq_features': list(seq), 'item_bags': list(ibags),
             'user_bags': list(ubags),
             'category_fields': list(cat_fields),
             'category_bag': self._category_bag(cat_fields, list(ibags))},
        image_size=image_size or (self.opt.image_size if caps else None),
        text=text, vectors=vectors,
        retrieval_candidates=candidates,
        seq_len=self.opt.seq_len, long_seq_len=self.opt.long_seq_len)
    return m
