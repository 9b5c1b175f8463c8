r"""Synthetic MovieLens copies in the releases' on-disk layouts.

MovieLens may not be redistributed, so the tests and the documented
MovieLens run use files generated here, in the exact layouts of

  ml-100k  u.data (user \t item \t rating \t time, unordered), u.item
           ('|', latin-1: id, 'Title (Year)', release date, video date,
           IMDb URL, 19 genre flags), u.user ('|': id, age, gender,
           occupation, zip)
  ml-1m    ratings.dat (sorted by user), movies.dat (id, 'Title (Year)',
           'A|B' genres; more movies than are rated), users.dat (id,
           gender, age bucket, occupation 0-20, zip); '::', latin-1

at the real sizes (`size='full'`: 100,000 ratings of 1,682 movies by 943
users; 1,000,209 ratings of 3,706 of 3,883 movies by 6,040 users) or small
(`size='small'`, for tests). What the generated logs share with the real
ones (so the splits, histories and claims behave alike):
  * every user has at least 20 ratings, the counts heavy-tailed;
  * users arrive over the span at a falling rate and rate most of their
    movies within their first days, coming back rarely: the ratings thin
    out towards the end (ml-100k's last week holds ~2% of them);
  * movies' popularity is Zipf-like, ratings 1-5 in the real shares
    (~6/11/27/34/22%), a (user, movie) pair rated once;
  * taste: each user prefers a few genres and rates movies of them higher,
    and titles are drawn from words tied to the movie's first genre, with
    its year: a title carries the signal that co-clicks carry (what text
    pre-training can learn), as real titles do only weakly.

Numbers measured on these files are synthetic: they exercise the pipeline
at the real sizes and say nothing about MovieLens itself.

  python tests/movielens_synth.py ml-100k /tmp/ml-100k-synth [small|full]
"""

import datetime
import os
import sys

import numpy as np

GENRES = ('unknown', 'Action', 'Adventure', 'Animation', "Children's",
          'Comedy', 'Crime', 'Documentary', 'Drama', 'Fantasy', 'Film-Noir',
          'Horror', 'Musical', 'Mystery', 'Romance', 'Sci-Fi', 'Thriller',
          'War', 'Western')
# ml-100k's genre counts (u.item), a movie's first genre drawn in proportion.
GENRE_SHARE = np.array([2, 251, 135, 42, 122, 505, 109, 50, 725, 22, 24, 92,
                        56, 61, 247, 101, 251, 71, 27], float)
# Words of titles by first genre (and words any title may hold).
WORDS = {
    'Action': 'fist fury strike mission thunder bullet hard fire raid chase',
    'Adventure': 'quest island treasure lost journey jungle voyage sea',
    'Animation': 'toon little magic dragon cartoon kingdom',
    "Children's": 'kid puppy school friends fairy little home',
    'Comedy': 'wedding crazy funny party dumb happy weekend nutty',
    'Crime': 'heist gang cop killer mob city dirty money',
    'Documentary': 'story life truth world inside portrait',
    'Drama': 'heart river father daughter silent winter letter promise',
    'Fantasy': 'wizard spell sword realm enchanted',
    'Film-Noir': 'shadow night dame double detour',
    'Horror': 'blood dead scream curse night evil zombie',
    'Musical': 'song dance melody broadway rhythm',
    'Mystery': 'secret clue vanishing stranger window',
    'Romance': 'love kiss paris bride sweet forever',
    'Sci-Fi': 'star alien planet robot space future galaxy',
    'Thriller': 'fear hunt trap deadly edge pursuit',
    'War': 'battle soldier platoon front glory',
    'Western': 'outlaw ranch gun sheriff frontier',
    'unknown': 'untitled',
}
COMMON = 'the man woman last first city return day dark american big'.split()
OCCUPATIONS = ('administrator', 'artist', 'doctor', 'educator', 'engineer',
               'entertainment', 'executive', 'healthcare', 'homemaker',
               'lawyer', 'librarian', 'marketing', 'none', 'other',
               'programmer', 'retired', 'salesman', 'scientist', 'student',
               'technician', 'writer')
# Real spans: 1997-09-20 .. 1998-04-22 (ml-100k), 2000-04-25 .. 2003-02-28
# (ml-1m; 90% of its ratings in 2000).
SIZES = {
    ('ml-100k', 'full'): dict(ratings=100_000, users=943, movies=1682,
                              rated=1682, t0=874_724_710, days=214,
                              arrival=1.2),
    ('ml-100k', 'small'): dict(ratings=7000, users=250, movies=250,
                               rated=250, t0=874_724_710, days=60,
                               arrival=1.2),
    ('ml-1m', 'full'): dict(ratings=1_000_209, users=6040, movies=3883,
                            rated=3706, t0=956_703_932, days=1039,
                            arrival=6.0),
    ('ml-1m', 'small'): dict(ratings=7000, users=250, movies=300, rated=280,
                             t0=956_703_932, days=120, arrival=4.0),
}
DAY = 86400
MIN_RATINGS = 20


def generate(release='ml-100k', size='small', seed=0):
  """The log and catalogue as arrays: dict of ratings (user, item, rating,
  time; users 1..U, items 1..rated), movies (title, genres: list of genre
  indices, year) and users (age, gender, occupation, zip)."""
  s = SIZES[(release, size)]
  rng = np.random.default_rng(seed)
  n_users, n_movies, n_rated = s['users'], s['movies'], s['rated']
  # Movies: a first genre in ml-100k's shares (never 'unknown' but one), up
  # to two more; a Zipf popularity over a random order; a quality.
  share = GENRE_SHARE[1:] / GENRE_SHARE[1:].sum()
  first = 1 + rng.choice(len(share), n_movies, p=share)
  genres = []
  for g in first:
    more = rng.choice(np.arange(1, len(GENRES)), rng.integers(0, 3),
                      replace=False)
    genres.append(sorted({int(g)} | {int(x) for x in more}))
  genres[0], first[0] = [0], 0  # ml-100k's one 'unknown' movie
  popularity = 1.0 / (1 + rng.permutation(n_rated)) ** 0.9
  quality = rng.normal(0, 0.6, n_movies)
  years = np.clip(np.round(1996 - rng.gamma(1.2, 8, n_movies)), 1922,
                  1998 if release == 'ml-100k' else 2000).astype(int)
  titles = [_title(rng, GENRES[g], y) for g, y in zip(first, years)]
  titles[1] = f'Café des Étoiles ({years[1]})'  # latin-1, as real titles
  # A duplicate title under another id, as in ml-100k.
  titles[2], years[2] = titles[3], years[3]

  # Users: counts >= 20, heavy-tailed, summing to the release's total.
  extra = rng.pareto(1.3, n_users) + 0.05
  counts = np.full(n_users, MIN_RATINGS)
  cap = int(0.45 * n_rated)  # ml-100k's most active user: 737 of 1,682
  while counts.sum() < s['ratings']:
    room = counts < cap
    p = np.where(room, extra, 0.0)
    counts = np.minimum(cap, counts + rng.multinomial(
        s['ratings'] - counts.sum(), p / p.sum()))
  taste = rng.dirichlet(np.full(len(GENRES), 0.15), n_users)
  onehot = np.zeros((n_movies, len(GENRES)))
  for i, g in enumerate(genres):
    onehot[i, g] = 1.0 / len(g)
  bias = rng.normal(0, 0.4, n_users)

  users, items, ratings, times = [], [], [], []
  span = s['days'] * DAY
  # Arrivals fall over the span (density ~ exp(-arrival * t / span)).
  u = rng.random(n_users)
  a = s['arrival']
  arrive = -np.log(1 - u * (1 - np.exp(-a))) / a * span * 0.97
  for user in range(n_users):
    n = int(counts[user])
    affinity = onehot[:n_rated] @ taste[user]
    w = np.log(popularity * (0.05 + affinity)) + rng.gumbel(size=n_rated)
    chosen = np.argpartition(-w, n - 1)[:n]
    rng.shuffle(chosen)  # the order of rating
    # Most ratings on the first visit, the rest on rare returns; a return
    # past the span's end never happened: its ratings join the first visit.
    sizes = [max(MIN_RATINGS, int(n * rng.uniform(0.5, 0.95)))]
    starts = [arrive[user]]
    while sum(sizes) < n:
      now = starts[-1] + rng.exponential(span / 6)
      if now >= span - DAY:
        sizes[0] += n - sum(sizes)
        break
      starts.append(now)
      sizes.append(min(n - sum(sizes), 1 + int(rng.exponential(6))))
    t = np.concatenate([t0 + np.cumsum(rng.exponential(40, k))
                        for t0, k in zip(starts, sizes)])
    score = (quality[chosen] + bias[user] + 2.5 * affinity[chosen]
             + rng.normal(0, 0.9, n))
    users.append(np.full(n, user + 1))
    items.append(chosen + 1)
    ratings.append(score)
    times.append(np.sort(t))
  score = np.concatenate(ratings)
  # Stars in the real shares: cut the scores at their quantiles.
  cuts = np.quantile(score, np.cumsum([0.061, 0.114, 0.271, 0.342])[:4])
  stars = 1 + np.searchsorted(cuts, score)
  out = dict(user=np.concatenate(users), item=np.concatenate(items),
             rating=stars, time=s['t0'] + np.concatenate(times).astype(
                 np.int64))
  _cover(rng, out, n_rated)
  ages = np.clip(rng.normal(33, 12, n_users).astype(int), 7, 73)
  return dict(ratings=out, titles=titles, genres=genres, years=years,
              users=dict(age=ages, gender=rng.choice(['M', 'F'], n_users,
                                                     p=[0.71, 0.29]),
                         occupation=rng.integers(0, len(OCCUPATIONS),
                                                 n_users),
                         zip=[_zip(rng) for _ in range(n_users)]))


def _title(rng, genre, year):
  words = WORDS[genre].split()
  w = list(rng.choice(words, min(len(words), rng.integers(1, 3)),
                      replace=False))
  if rng.random() < 0.5:
    w.insert(rng.integers(0, len(w) + 1), rng.choice(COMMON))
  t = ' '.join(x.capitalize() for x in w)
  if t.startswith('The '):  # 'Usual Suspects, The (1995)'
    t = t[4:] + ', The'
  return f'{t} ({year})'


def _zip(rng):
  if rng.random() < 0.02:  # Canadian codes, as in the real files
    return 'V3N4P'
  return f'{rng.integers(0, 100000):05d}'


def _cover(rng, r, n_rated):
  """Every one of the `n_rated` movies rated at least once: an unrated
  movie takes the rating row of a user who has not rated it, from a movie
  rated more than once."""
  counts = np.bincount(r['item'], minlength=n_rated + 1)
  for movie in np.flatnonzero(counts[1:] == 0) + 1:
    while True:
      row = rng.integers(len(r['item']))
      old, user = r['item'][row], r['user'][row]
      if counts[old] > 1 and not np.any(
          (r['user'] == user) & (r['item'] == movie)):
        break
    r['item'][row] = movie
    counts[old] -= 1
    counts[movie] += 1


def write(directory, release='ml-100k', size='small', seed=0):
  """Writes `release`'s files into `directory`; returns `generate`'s dict."""
  g = generate(release, size, seed)
  os.makedirs(directory, exist_ok=True)
  r = g['ratings']
  users = g['users']
  n_users = len(users['age'])

  def lines(name, rows):
    with open(os.path.join(directory, name), 'w', encoding='latin-1',
              newline='\n') as f:
      f.writelines(row + '\n' for row in rows)

  if release == 'ml-100k':
    order = np.random.default_rng(seed + 1).permutation(len(r['user']))
    lines('u.data', (f'{r["user"][k]}\t{r["item"][k]}\t{r["rating"][k]}\t'
                     f'{r["time"][k]}' for k in order))
    rows = []
    for i, (title, gs, year) in enumerate(zip(g['titles'], g['genres'],
                                              g['years'])):
      flags = '|'.join('1' if k in gs else '0' for k in range(len(GENRES)))
      if gs == [0]:  # the real 'unknown' movie: no title, no date
        rows.append(f'{i + 1}|unknown||||{flags}')
        continue
      date = datetime.date(int(year), 1, 1).strftime('%d-%b-%Y')
      url = 'http://us.imdb.com/M/title-exact?' + title.replace(' ', '%20')
      rows.append(f'{i + 1}|{title}|{date}||{url}|{flags}')
    lines('u.item', rows)
    lines('u.user', (f'{u + 1}|{users["age"][u]}|{users["gender"][u]}|'
                     f'{OCCUPATIONS[users["occupation"][u]]}|{users["zip"][u]}'
                     for u in range(n_users)))
  elif release == 'ml-1m':
    order = np.lexsort((np.random.default_rng(seed + 1).random(
        len(r['user'])), r['user']))
    lines('ratings.dat', (f'{r["user"][k]}::{r["item"][k]}::'
                          f'{r["rating"][k]}::{r["time"][k]}' for k in order))
    lines('movies.dat', (
        f'{i + 1}::{t}::' + ('|'.join(GENRES[k] for k in gs if k) or 'Drama')
        for i, (t, gs) in enumerate(zip(g['titles'], g['genres']))))
    buckets = np.array([1, 18, 25, 35, 45, 50, 56])
    age = buckets[np.searchsorted(buckets, users['age'], 'right') - 1]
    lines('users.dat', (f'{u + 1}::{users["gender"][u]}::{age[u]}::'
                        f'{users["occupation"][u]}::{users["zip"][u]}'
                        for u in range(n_users)))
  else:
    raise ValueError(f'release {release!r}: expected ml-100k or ml-1m')
  return g


if __name__ == '__main__':
  if len(sys.argv) not in (3, 4):
    sys.exit(__doc__.split('\n\n')[-1].strip())
  write(sys.argv[2], sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else 'full')
