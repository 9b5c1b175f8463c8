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
  emoji       emoji sets from npm (`make realdata` installs them): the
              same concepts drawn in several styles (OpenMoji, Microsoft
              Fluent flat and 3D), image queries in another style, text
              queries from CLDR labels / tags / shortcodes in `emoji.locales`;
              source_dir = the npm prefix (or its node_modules)

The source directory is only read; the dataset is built beside --workdir and
renamed into place (new or empty workdir; the same conversion of the same
source files (names, sizes, mtimes) is reused; a changed source is refused).
`:tiny` shrinks sequence length, image size and vocabulary (for tests).
Time on a 2-core CPU: see experiments/README.md (data job).
"""

import ml_collections

from experiments import configs

SOURCES = ('parquet', 'movielens', 'taobao_mm', 'microlens', 'taobao_ad',
           'amazon', 'emoji')


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
  # The split policy (mmrec.data.impression_scan.split_days):
  #   'days'   the last `test_days` day(s) are the test split, the
  #            `validation_days` before them the validation split
  #            (--config.validation); own data's default: one day each
  #   'share'  the fewest last days holding `test_share` of the
  #            impressions, then the fewest days before them holding
  #            `validation_share`: for logs that thin out towards their end
  # Shipped splits (taobao_mm, microlens, taobao_ad) keep theirs. The data
  # job warns when the test split has fewer users with both classes than
  # the bootstrap needs for intervals (mmrec.bootstrap.MIN_USERS).
  v.split = 'days'
  v.test_days = 1
  v.validation_days = 1
  v.test_share = 0.1
  v.validation_share = 0.1
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
  # Plausibility: a longer span (a time in ms among seconds) or a test split
  # with fewer users having both a click and a non-click stops the job,
  # naming the outlier; 0 = allow it.
  v.max_days = 36525
  v.min_test_users = 1
  # Which item fields behaviours carry / feed id_stats' category shares;
  # None = the first item field.
  v.seq_features = ml_collections.FieldReference(None, field_type=tuple)
  v.category_fields = ml_collections.FieldReference(None, field_type=tuple)
  # Without a categorical item field: the item bag standing in for the
  # category (id_stats' shares, the @ids control); None = the first bag.
  v.category_bag = ml_collections.FieldReference(None, field_type=str)
  if source == 'movielens':
    # Ratings span months to years and thin out towards the end (the last
    # week of ml-100k: 2% of the ratings, 52 users): the last days holding
    # 10% of the ratings test, the 10% before them validation.
    v.split = 'share'
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
  if source == 'emoji':
    # The reader's settings (mmrec/data/readers/emoji.py; part of the
    # conversion's identity).
    e = ml_collections.ConfigDict()
    e.styles = 'openmoji_color,openmoji_black,fluent_flat,fluent_3d'
    # emojibase-data locales of the text queries (labels, tags; en also
    # shortcodes); en is required (titles are its labels).
    e.locales = 'en,zh,ja,de,fr,es'
    # Drawings of each concept in the catalogue (the rest are queries).
    e.catalogue_styles = 1
    # 'any' other drawing queries it, or only an 'other_maker''s (not the
    # same artist's line work in another rendering).
    e.queries = 'any'
    e.held_out_share = 0.15  # concepts whose sessions are all held out
    e.text_queries = 12  # text sessions per concept (drawn from its texts)
    e.hard_negatives = 3  # other concepts' items, same subgroup (else group)
    e.users = 1000  # synthetic searchers the sessions are spread over
    e.seed = 0
    c.emoji = e
  c.convert = v
  if tiny:
    v.seq_len = 10
    v.image_size = 16
    v.title_length = 8
    v.vocab_size = 200
    v.chunk_rows = 1000
  return c
