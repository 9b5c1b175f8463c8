r"""The data job: a local copy of real data -> a dataset every job can read.

  python -m experiments.main --config=experiments/configs/data.py:SOURCE \
      --config.source_dir=/path/to/your/copy --workdir=/tmp/mmrec/data_SOURCE

then point any job at it: `--config.data_dir=/tmp/mmrec/data_SOURCE`.

SOURCE (default `parquet`) is one of
  parquet     your own data in the documented Parquet schema
              (docs/data_format.md, "Your own data")
  movielens   ml-100k (u.data, u.item, u.user), ml-1m (ratings.dat,
              movies.dat, users.dat; '::', latin-1) or ml-latest(-small)
              (ratings.csv, movies.csv): ratings >= `label_threshold` are
              clicks, every rating an impression
  taobao_mm   the Taobao-MM release (MUSE): train/ and test/ shards or the
              data_demo files; ships SCL int8 item vectors -> item_vectors.npz
  microlens   MicroLens_1M_x1 (BARS): train/valid/test.parquet, item_info.parquet
              (tags, item_emb_d128 -> item_vectors.npz)
  taobao_ad   TaobaoAd_x1 (BARS): train.csv, test.csv (ids and categoricals
              only; shipped split, no validation day)
  amazon      Amazon Reviews 2023: <Category>.jsonl[.gz] and
              meta_<Category>.jsonl[.gz]; reviews are clicks, non-clicks
              sampled (`amazon.negatives` per review, `amazon.seed`);
              titles, main_category / store, categories (bag); images from
              `amazon.image_dir`/<parent_asin>.jpg

The source directory is only read; the dataset is built beside --workdir and
renamed into place (new or empty workdir; the same conversion is reused).
`:tiny` shrinks sequence length, image size and vocabulary (for tests).
Time on a 2-core CPU: see experiments/README.md (data job).
"""

import ml_collections

from experiments import configs

SOURCES = ('parquet', 'movielens', 'taobao_mm', 'microlens', 'taobao_ad',
           'amazon')


def get_config(arg=None):
  source, tiny = configs.parse_choice(arg, SOURCES, 'parquet', 'source')
  c = ml_collections.ConfigDict()
  c.job = 'data'
  c.source = source
  c.source_dir = ''  # your local copy (only read)
  # MovieLens: ratings >= this are clicks (4 of 5 stars: "liked").
  c.label_threshold = 4.0

  # How the converter builds the dataset (mmrec.data.convert.Options).
  v = ml_collections.ConfigDict()
  v.name = source
  v.test_days = 1  # the last day(s) are the test split
  v.validation_days = 1  # the day(s) before them: --config.validation
  # Ids seen fewer times in the training days map to 0 ("rare"): 1 keeps all.
  v.min_count = 1
  v.seq_len = 50  # behaviour sequence length L (as the world)
  # > 0: also keep this many behaviours as the long history (SimTier over
  # it, GSU retrieval with the CTR config's retrieve_top_k); 1000 = the
  # MUSE code's Taobao-MM setting (4 KB per impression).
  v.long_seq_len = 0
  v.image_size = 32  # images resized to this (as the world)
  # Transparent pixels (icons, emoji) are composited on this RGB colour.
  v.image_background = (255, 255, 255)
  v.title_length = 16
  v.vocab_size = 8000  # WordPiece vocabulary of the titles and queries
  # A tokenizer.json (HF `tokenizers` format, id 0 = padding) to use instead
  # of training one; '' = train on the training split's titles and queries.
  v.tokenizer = ''
  v.max_hard_negatives = 3  # hard-negative slots per search session
  v.max_bag = 8  # slots of a multi-valued field (genres, tags)
  v.chunk_rows = 65536  # impressions / search rows per chunk: bounds memory
  # Which item fields behaviours carry / feed id_stats' category shares;
  # None = the first item field.
  v.seq_features = ml_collections.FieldReference(None, field_type=tuple)
  v.category_fields = ml_collections.FieldReference(None, field_type=tuple)
  if source == 'movielens':
    # Ratings span years: a test week and a validation week.
    v.test_days = v.validation_days = 7
  if source == 'taobao_mm':
    v.chunk_rows = 8192  # 1000-long histories: ~64 MB of ids per chunk
  if source == 'amazon':
    # Reviews span decades and are sparse per day: a test month and a
    # validation month.
    v.test_days = v.validation_days = 30
    # The reader's own settings (part of the conversion's identity).
    a = ml_collections.ConfigDict()
    a.category = ''  # <Category> of the files; '' = the only one present
    a.image_dir = ''  # a folder of <parent_asin>.jpg; '' = no images
    a.negatives = 1  # sampled non-clicks per review (implicit feedback)
    a.seed = 0  # of the negative sampler
    c.amazon = a
  c.convert = v
  if tiny:
    v.seq_len = 10
    v.image_size = 16
    v.title_length = 8
    v.vocab_size = 200
    v.chunk_rows = 1000
  return c
