"""Emoji sets from npm -> a cross-style search dataset in convert's schema.

The same concepts (Unicode emoji, matched by code point) drawn by
independent artists: a real-image development set that needs no scraping.
`make realdata` installs the packages (pinned, from the npm registry) and
runs the data job on their `node_modules`; this reader only reads that
directory. Packages (config.emoji.styles picks the styles):

  openmoji_color, openmoji_black   openmoji: color/svg, black/svg
                                   (CC BY-SA 4.0)
  fluent_flat                      @lobehub/fluent-emoji-flat: assets/*.svg
                                   (Microsoft Fluent Emoji, MIT)
  fluent_3d                        @lobehub/fluent-emoji-3d: assets/*.webp
  text, groups                     emojibase-data (MIT): per locale CLDR
                                   labels and tags, shortcodes (aliases),
                                   the group / subgroup of each emoji

What is staged:
  items        one per (concept, catalogue style): `catalogue_styles` of
               each concept's drawings (drawn at random per concept; the
               others are queries only); title = the English CLDR label;
               fields style, group, subgroup
  search       image queries: the concept drawn in a query style, buying
               each of its catalogue drawings; text queries: labels of the
               other locales, tags, shortcodes (never the title itself),
               each buying one of the concept's items; hard negatives:
               items of other concepts of the same subgroup (else group);
               `held_out_share` of the concepts are test sessions only
               (held-out concepts)
  impressions  a search's bought item is a click, its hard negatives
               non-clicks (train or test with its session), and every item
               one non-click listing so the catalogue is whole
  captions     (query drawing, "label: tags") of the training concepts
  LICENSES.md  every package's name, version, licence and licence text;
               the data job copies it into the dataset (OpenMoji is
               share-alike: a dataset holding its drawings is CC BY-SA 4.0)
  query_slices.json
               the image query sessions (row numbers of search.parquet,
               the converter's session ids) whose query drawing comes from
               the catalogue item's maker ('same maker': a re-rendering of
               the same line work) or another ('other maker'): the data job
               copies it, realdata_bench reports each slice

SVGs are rasterised with resvg (`pip install resvg-py`, the `realdata`
extra) at the conversion's image size; transparent pixels stay transparent
here and are composited on white by the converter.

(Over the house's ~450 lines on purpose: one reader, from the packages'
files to the staged tables, as the other readers are.)
"""

import dataclasses
import io
import json
import os
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging
from PIL import Image

from mmrec import files
from mmrec.data import columns
from mmrec.data import manifest

TEXT_PACKAGE = 'emojibase-data'
LICENSE_FILES = ('LICENSE', 'LICENSE.txt', 'LICENSE.md', 'LICENCE')
# A style with more undrawable files than this share is a broken package,
# not a few bad files.
MAX_BAD_SHARE = 0.05
SKIP_GROUPS = ('component',)  # skin tones and hair: parts, not concepts
# Shortcode sets (aliases) read per locale: English CLDR and GitHub's
# (':smile:'); other locales' are romanisations (pinyin), not queries.
SHORTCODES = {'en': ('cldr', 'github')}


@dataclasses.dataclass(frozen=True)
class Style:
  package: str  # the npm package (a folder of node_modules)
  folder: str  # where its drawings are, one file per emoji
  artist: str  # for LICENSES.md: who drew it, where it comes from
  maker: str  # styles of one maker share line work (emoji.queries)


STYLES = {
    'openmoji_color': Style('openmoji', 'color/svg',
                            'OpenMoji, HfG Schwaebisch Gmuend (openmoji.org)',
                            'openmoji'),
    'openmoji_black': Style('openmoji', 'black/svg',
                            'OpenMoji, HfG Schwaebisch Gmuend (openmoji.org)',
                            'openmoji'),
    'fluent_flat': Style('@lobehub/fluent-emoji-flat', 'assets',
                         'Microsoft Fluent Emoji (github.com/microsoft/'
                         'fluentui-emoji), packaged by LobeHub', 'microsoft'),
    'fluent_3d': Style('@lobehub/fluent-emoji-3d', 'assets',
                       'Microsoft Fluent Emoji (github.com/microsoft/'
                       'fluentui-emoji), packaged by LobeHub', 'microsoft'),
}
# emoji.queries: which drawings of a concept query its catalogue drawing.
# 'other_maker' keeps the queries an independent artist drew: one maker's
# styles share outlines (OpenMoji's black is its colour set's line art;
# Fluent's flat and 3D the same shapes), which raw pixels match almost
# perfectly (docs/realdata.md).
QUERIES = ('any', 'other_maker')
SLICES_DOC = ('image query sessions (search.parquet rows = session ids) whose '
              "query drawing is by the bought item's maker ('same maker': "
              "the same line work re-rendered) or by another ('other maker')")
IMAGE_EXTS = ('.svg', '.png', '.webp')
INSTALL_HINT = ('make realdata installs them (npm install --prefix DIR '
                'openmoji emojibase-data @lobehub/fluent-emoji-flat '
                '@lobehub/fluent-emoji-3d; then source_dir=DIR/node_modules)')


def concept_key(hexcode):
  """'2764-FE0F' / '2764' -> '2764': the code points without variation
  selectors, upper case (file names differ in both across packages)."""
  parts = [p for p in hexcode.upper().replace('_', '-').split('-') if p]
  return '-'.join(p for p in parts if p != 'FE0F')


def _root(source_dir):
  nm = os.path.join(source_dir, 'node_modules')
  return nm if os.path.isdir(nm) else source_dir


def _package(root, name):
  path = os.path.join(root, name)
  meta = os.path.join(path, 'package.json')
  if not os.path.isfile(meta):
    raise columns.InputError(
        f'{root}: package {name} not found (no {name}/package.json; found '
        f'{sorted(os.listdir(root))[:12]}). {INSTALL_HINT}')
  try:
    with open(meta, encoding='utf8') as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise columns.InputError(f'{meta}: not a package.json ({e})') from None
  if not isinstance(info, dict):
    raise columns.InputError(f'{meta}: expected a JSON object')
  return path, info


def _load_json(path, what):
  if not os.path.isfile(path):
    raise columns.InputError(f'{path}: missing ({what})')
  try:
    with open(path, encoding='utf8') as f:
      return json.load(f)
  except ValueError as e:
    raise columns.InputError(f'{path}: not JSON ({e})') from None


def _split_list(value, where):
  if value is None or value == '':
    return []
  if isinstance(value, str):
    return [v.strip() for v in value.split(',') if v.strip()]
  return [str(v).strip() for v in value if str(v).strip()]


def read_concepts(root, locales):
  """{key: dict(label, group, subgroup, texts)} from emojibase-data.

  `texts`: the query texts of every locale (labels but the English one,
  tags, shortcodes as words), distinct, in a fixed order."""
  path, _ = _package(root, TEXT_PACKAGE)
  groups = _load_json(os.path.join(path, 'meta', 'groups.json'),
                      'emoji group names')
  if not isinstance(groups, dict) or not {'groups', 'subgroups'} <= set(
      groups):
    raise columns.InputError(f'{path}/meta/groups.json: expected keys '
                             "'groups' and 'subgroups'")
  if 'en' not in locales:
    raise ValueError(f'emoji.locales = {locales!r}: must include en (the '
                     'titles are the English labels)')
  concepts = {}
  for locale in locales:
    data = _load_json(os.path.join(path, locale, 'data.json'),
                      f'emoji labels and tags in locale {locale!r}')
    shortcodes = {}
    for name in SHORTCODES.get(locale, ()):
      codes = os.path.join(path, locale, 'shortcodes', f'{name}.json')
      if os.path.isfile(codes):
        for h, v in _load_json(codes, 'shortcodes').items():
          shortcodes.setdefault(h, []).extend(_split_list(
              [v] if isinstance(v, str) else v, codes))
    if not isinstance(data, list):
      raise columns.InputError(f'{path}/{locale}/data.json: expected a list '
                               'of emoji')
    for row, e in enumerate(data):
      if not isinstance(e, dict) or 'hexcode' not in e or 'label' not in e:
        raise columns.InputError(
            f'{path}/{locale}/data.json, entry {row}: expected an object with '
            f"'hexcode' and 'label', got {str(e)[:80]}")
      if e.get('group') is None:
        continue  # regional indicators and the like: no concept
      key = concept_key(e['hexcode'])
      if locale == 'en':
        group = groups['groups'].get(str(e['group']), str(e['group']))
        if group in SKIP_GROUPS:
          continue
        concepts[key] = dict(
            label=e['label'], group=group,
            subgroup=groups['subgroups'].get(str(e.get('subgroup')),
                                             str(e.get('subgroup'))),
            texts=[])
      c = concepts.get(key)
      if c is None:
        continue
      texts = [] if locale == 'en' else [e['label']]
      texts += _split_list(e.get('tags'), f'{locale} tags')
      texts += [s.replace('_', ' ') for s in _split_list(
          shortcodes.get(e['hexcode'], []), 'shortcodes')]
      c['texts'] += texts
  for c in concepts.values():
    seen, out = {c['label'].casefold()}, []
    for t in c['texts']:
      if t.casefold() not in seen:
        seen.add(t.casefold())
        out.append(t)
    c['texts'] = out
  if not concepts:
    raise columns.InputError(f'{path}: no emoji with a group in en/data.json')
  return concepts


def find_drawings(root, style_name):
  """{key: path} of one style's drawings (the largest file of a key: some
  packages ship an empty 2764.svg beside 2764-fe0f.svg)."""
  if style_name not in STYLES:
    raise ValueError(f'emoji.styles: unknown style {style_name!r}; known: '
                     f'{sorted(STYLES)}')
  style = STYLES[style_name]
  path, _ = _package(root, style.package)
  folder = os.path.join(path, style.folder)
  if not os.path.isdir(folder):
    raise columns.InputError(
        f'{path}: no folder {style.folder} (style {style_name}); found '
        f'{sorted(os.listdir(path))[:12]}: not the package layout this '
        'reader knows (a different version?)')
  found = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in IMAGE_EXTS:
      continue
    full = os.path.join(folder, name)
    key = concept_key(stem)
    if key not in found or os.path.getsize(full) > os.path.getsize(
        found[key]):
      found[key] = full
  if not found:
    raise columns.InputError(
        f'{folder}: no drawings ({"/".join(IMAGE_EXTS)} files) for style '
        f'{style_name}')
  return found


def _resvg():
  try:
    import resvg_py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        'rasterising the SVG drawings needs resvg-py: pip install resvg-py '
        "(the 'realdata' extra: pip install -e '.[realdata]'; make "
        'realdata installs it)') from None
  return resvg_py


def draw(path, size):
  """An RGBA PIL image of `path` at (size, size), or ValueError."""
  if path.lower().endswith('.svg'):
    if os.path.getsize(path) == 0:
      raise ValueError('empty file')
    png = _resvg().svg_to_bytes(svg_path=path, width=size, height=size,
                                skip_system_fonts=True)
    return Image.open(io.BytesIO(png)).convert('RGBA')
  with Image.open(path) as im:
    return im.convert('RGBA').resize((size, size),
                                     Image.Resampling.LANCZOS)


def _stage_images(drawings, out_dir, size):
  """Draws every (key, style) into out_dir/images; {(key, style): rel}."""
  os.makedirs(os.path.join(out_dir, 'images'), exist_ok=True)
  staged = {}
  for style, found in drawings.items():
    bad = []
    for key, path in found.items():
      rel = os.path.join('images', f'{style}_{key}.png')
      try:
        draw(path, size).save(os.path.join(out_dir, rel))
      except (OSError, ValueError) as e:
        bad.append(f'{os.path.basename(path)} ({e})')
        continue
      staged[(key, style)] = rel
    if bad:
      logging.warning('emoji: %d of %d drawings of style %s could not be '
                      'drawn and are left out, e.g. %s', len(bad), len(found),
                      style, '; '.join(bad[:3]))
    if len(bad) > MAX_BAD_SHARE * len(found):
      raise columns.InputError(
          f'style {style}: {len(bad)} of {len(found)} drawings could not be '
          f'drawn (e.g. {"; ".join(bad[:3])}): a broken package?')
  return staged


def _licenses(root, packages):
  """LICENSES.md: each package's name, version, licence, styles, text."""
  lines = ['# Licences of the drawings and texts in this dataset', '',
           'Built by mmrec (mmrec/data/readers/emoji.py) from these npm '
           'packages. The images derived from OpenMoji are licensed under '
           'CC BY-SA 4.0: a dataset holding them is shared alike, with this '
           'attribution. Never commit the images.', '',
           '| package | version | licence | used for |', '|---|---|---|---|']
  texts = []
  for name, used in packages.items():
    path, info = _package(root, name)
    lic = info.get('license') or 'unknown'
    if isinstance(lic, dict):
      lic = lic.get('type', 'unknown')
    lines.append(f'| {name} | {info.get("version", "?")} | {lic} | {used} |')
    for f in LICENSE_FILES:
      if os.path.isfile(os.path.join(path, f)):
        with open(os.path.join(path, f), encoding='utf8',
                  errors='replace') as fh:
          texts += ['', f'## {name}: {f}', '', '```', fh.read().strip(),
                    '```']
        break
    else:
      texts += ['', f'## {name}', '', f'No licence file in the package; its '
                f'package.json declares {lic}.']
  lines += ['', 'Attribution: "OpenMoji - the open-source emoji and icon '
            'project. License: CC BY-SA 4.0" (openmoji.org); Fluent Emoji '
            'Copyright (c) Microsoft Corporation, MIT; emoji labels and tags '
            'from Unicode CLDR via emojibase (MIT).']
  return '\n'.join(lines + texts) + '\n'


def _rng(seed, *parts):
  """A generator fixed by seed and names (the same whatever the order of
  other draws)."""
  h = zlib.crc32('\0'.join(map(str, parts)).encode())
  return np.random.default_rng([seed, h])


def _hard_negatives(key, concepts, by_subgroup, by_group, rng, n):
  """`n` catalogue items of other concepts of the key's subgroup (else its
  group): what a searcher clicks and does not buy."""
  c = concepts[key]
  for pool in (by_subgroup[c['subgroup']], by_group[c['group']]):
    cands = [i for k in pool if k != key for i in _items_of(k, concepts)]
    if len(cands) >= n:
      break
  picks = rng.choice(len(cands), size=min(n, len(cands)), replace=False)
  return [cands[i] for i in sorted(picks)]


def _items_of(key, concepts):
  return [f'{key}/{s}' for s in concepts[key]['catalogue']]


def stage(source_dir, out_dir, config):
  """Writes items, search, impressions, captions, images and LICENSES.md."""
  e = config.emoji
  root = _root(source_dir)
  styles = _split_list(e.styles, 'emoji.styles')
  if len(styles) < 2:
    raise ValueError(f'emoji.styles = {e.styles!r}: name at least two styles '
                     f'(image queries are a concept in another style); '
                     f'known: {sorted(STYLES)}')
  locales = _split_list(e.locales, 'emoji.locales')
  if not 0 < e.held_out_share < 1:
    raise ValueError(f'emoji.held_out_share = {e.held_out_share}: expected '
                     'a share in (0, 1)')
  if e.queries not in QUERIES:
    raise ValueError(f'emoji.queries = {e.queries!r}: expected one of '
                     f'{QUERIES}')
  if e.catalogue_styles < 1:
    raise ValueError(f'emoji.catalogue_styles = {e.catalogue_styles}: '
                     'expected >= 1')
  concepts = read_concepts(root, locales)
  drawings = {s: find_drawings(root, s) for s in styles}
  drawings = {s: {k: p for k, p in f.items() if k in concepts}
              for s, f in drawings.items()}
  have = _stage_images(drawings, out_dir, int(config.convert.image_size))
  # Concepts drawn in at least two styles: an image query needs another.
  keys = sorted(k for k in concepts
                if sum((k, s) in have for s in styles) >= 2)
  if len(keys) < 10:
    raise columns.InputError(
        f'{root}: only {len(keys)} emoji are drawn in two or more of the '
        f'styles {styles}: not enough for a dataset')
  # Per concept, `catalogue_styles` drawings (drawn at random) are the
  # catalogue's items and the others only ever queries: a query drawing
  # that were itself an item would be the nearest item to its query, of the
  # right concept, yet counted wrong.
  for k in keys:
    drawn = [s for s in styles if (k, s) in have]
    order = _rng(e.seed, 'catalogue', k).permutation(len(drawn))
    n = min(e.catalogue_styles, len(drawn) - 1)
    cat = [drawn[i] for i in sorted(order[:n])]
    concepts[k]['catalogue'] = cat
    concepts[k]['query'] = [
        drawn[i] for i in sorted(order[n:])
        if e.queries == 'any' or all(
            STYLES[drawn[i]].maker != STYLES[c].maker for c in cat)]
  order = _rng(e.seed, 'held_out').permutation(len(keys))
  n_test = max(1, int(round(e.held_out_share * len(keys))))
  test = {keys[i] for i in order[:n_test]}
  by_subgroup, by_group = {}, {}
  for k in keys:
    by_subgroup.setdefault(concepts[k]['subgroup'], []).append(k)
    by_group.setdefault(concepts[k]['group'], []).append(k)

  items = {'item': [], 'title': [], 'image': [], 'style': [], 'group': [],
           'subgroup': []}
  for k in keys:
    for s in concepts[k]['catalogue']:
      items['item'].append(f'{k}/{s}')
      items['title'].append(concepts[k]['label'])
      items['image'].append(have[(k, s)])
      items['style'].append(s)
      items['group'].append(concepts[k]['group'])
      items['subgroup'].append(concepts[k]['subgroup'])

  search = {'item': [], 'query_text': [], 'query_image': [],
            'hard_negatives': [], 'user': [], 'split': [], 'maker': []}
  def session(key, style, text, image, rng, query_style=None):
    search['item'].append(f'{key}/{style}')
    search['maker'].append(
        None if query_style is None else 'same maker'
        if STYLES[query_style].maker == STYLES[style].maker else 'other maker')
    search['query_text'].append(text)
    search['query_image'].append(image)
    search['hard_negatives'].append(_hard_negatives(
        key, concepts, by_subgroup, by_group, rng, e.hard_negatives))
    search['user'].append(int(rng.integers(e.users)))
    search['split'].append('test' if key in test else 'train')

  for k in keys:
    cat = concepts[k]['catalogue']
    for q in concepts[k]['query']:
      for s in cat:
        session(k, s, None, have[(k, q)], _rng(e.seed, 'image', k, q, s),
                query_style=q)
    texts = concepts[k]['texts']
    rng = _rng(e.seed, 'text', k)
    for i in rng.permutation(len(texts))[:e.text_queries]:
      session(k, cat[int(rng.integers(len(cat)))], texts[i], None, rng)

  # Impressions: what a search showed (bought = click, hard negatives not),
  # plus one listing of every item so the catalogue is whole.
  imp = {'user': [], 'item': [], 'label': [], 'split': []}
  for item, negs, user, split in zip(search['item'], search['hard_negatives'],
                                     search['user'], search['split']):
    for it, label in [(item, 1)] + [(n, 0) for n in negs]:
      imp['user'].append(user)
      imp['item'].append(it)
      imp['label'].append(label)
      imp['split'].append(split)
  for it in items['item']:
    imp['user'].append(e.users)  # the catalogue's own listing "user"
    imp['item'].append(it)
    imp['label'].append(0)
    imp['split'].append('train')

  # Captions: the query-only drawings of the training concepts, never an
  # item's image nor a held-out concept.
  captions = {'image': [], 'caption': []}
  for k in keys:
    if k not in test:
      c = concepts[k]
      en_tags = [t for t in c['texts'] if t.isascii()][:4]
      for q in c['query']:
        captions['image'].append(have[(k, q)])
        captions['caption'].append(
            c['label'] + (': ' + ', '.join(en_tags) if en_tags else ''))

  s = pa.string()
  pq.write_table(pa.table(items), os.path.join(out_dir, 'items.parquet'))
  pq.write_table(pa.table({
      'item': pa.array(search['item'], s),
      'query_text': pa.array(search['query_text'], s),
      'query_image': pa.array(search['query_image'], s),
      'hard_negatives': pa.array(search['hard_negatives'], pa.list_(s)),
      'user': pa.array(search['user'], pa.int64()),
      'split': pa.array(search['split'], s)}),
                 os.path.join(out_dir, 'search.parquet'))
  pq.write_table(pa.table({
      'user': pa.array(imp['user'], pa.int64()),
      'item': pa.array(imp['item'], s),
      'label': pa.array(imp['label'], pa.int8()),
      'split': pa.array(imp['split'], s)}),
                 os.path.join(out_dir, 'impressions.parquet'))
  pq.write_table(pa.table(captions), os.path.join(out_dir, 'captions.parquet'))
  packages = {}
  for st in styles:
    packages.setdefault(STYLES[st].package, []).append(st)
  used = {p: 'drawings: ' + ', '.join(v) for p, v in packages.items()}
  used[TEXT_PACKAGE] = ('labels, tags, shortcodes, groups (locales '
                        f'{", ".join(locales)})')
  with open(os.path.join(out_dir, 'LICENSES.md'), 'w', encoding='utf8') as f:
    f.write(_licenses(root, used))
  files.write_json(os.path.join(out_dir, manifest.QUERY_SLICES_FILE), {
      'doc': SLICES_DOC,
      'slices': {name: [i for i, r in enumerate(search['maker']) if r == name]
                 for name in ('same maker', 'other maker')}})
  logging.info('emoji: %d concepts (%d held out), %d items in %d styles, '
               '%d search sessions', len(keys), len(test),
               len(items['item']), len(styles), len(search['item']))
  return 'emoji'
