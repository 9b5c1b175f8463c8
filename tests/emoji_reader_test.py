"""The emoji reader (make realdata) on a tiny fake npm layout of generated
drawings: sessions, held-out concepts, licences, conversion and errors."""

import importlib.util
import json
import os
import shutil
import tempfile

from absl.testing import absltest
import fixtures
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from mmrec.data import builders
from mmrec.data import columns
from mmrec.data import dataset_job
from mmrec.data import manifest
from mmrec.data.readers import emoji

GROUPS = {'groups': {'0': 'smileys-emotion', '1': 'animals-nature',
                     '2': 'component'},
          'subgroups': {'0': 'face-smiling', '1': 'face-sad',
                        '2': 'animal-mammal', '3': 'skin-tone'}}
N = 24  # concepts; the last is drawn in one style only (no image query)
STYLES = 'openmoji_color,openmoji_black,fluent_flat,fluent_3d'


def _hex(i):
  return f'{0x1F600 + i:X}'


def _subgroup(i):
  return (0, 1, 2)[i % 3]


def _drawing(i, style, size=20):
  """RGBA: a disc whose colour tells the concept, on transparency."""
  im = Image.new('RGBA', (size, size), (0, 0, 0, 0))
  colour = (40 + 8 * i, 200 - 6 * i, 30 * (i % 5), 255)
  if style == 'openmoji_black':
    colour = (0, 0, 0, 255)
  for y in range(4, size - 4):
    for x in range(4, size - 4):
      im.putpixel((x, y), colour)
  return im


def _package(root, name, version, license_name, license_text=None):
  path = os.path.join(root, 'node_modules', name)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'package.json'), 'w') as f:
    json.dump({'name': name, 'version': version, 'license': license_name}, f)
  if license_text:
    with open(os.path.join(path, 'LICENSE.txt'), 'w') as f:
      f.write(license_text)
  return path


def write_packages(root, svg=False):
  """The npm prefix `make realdata` installs, in miniature."""
  om = _package(root, 'openmoji', '17.0.0', 'CC-BY-SA-4.0',
                'Attribution-ShareAlike 4.0 International (fake)')
  flat = _package(root, '@lobehub/fluent-emoji-flat', '1.1.0', 'MIT')
  d3 = _package(root, '@lobehub/fluent-emoji-3d', '1.1.0', 'MIT')
  folders = {'openmoji_color': os.path.join(om, 'color', 'svg'),
             'openmoji_black': os.path.join(om, 'black', 'svg'),
             'fluent_flat': os.path.join(flat, 'assets'),
             'fluent_3d': os.path.join(d3, 'assets')}
  for f in folders.values():
    os.makedirs(f)
  for i in range(N):
    styles = ['openmoji_color'] if i == N - 1 else list(folders)
    for s in styles:
      if s.startswith('openmoji'):
        name = _hex(i)
      else:  # LobeHub's names: lower case, fully qualified
        name = _hex(i).lower() + ('-fe0f' if i == 0 else '')
      ext = '.webp' if s == 'fluent_3d' else '.png'
      if svg and s == 'openmoji_color':
        with open(os.path.join(folders[s], name + '.svg'), 'w') as f:
          r, g, b, _ = _drawing(i, s).getpixel((10, 10))
          f.write('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 20 '
                  f'20"><circle cx="10" cy="10" r="6" fill="rgb({r},{g},{b})"'
                  '/></svg>')
      else:
        _drawing(i, s).save(os.path.join(folders[s], name + ext))
  # An empty duplicate beside the fully qualified file (as LobeHub ships
  # 2764.svg beside 2764-fe0f.svg): the non-empty one is read.
  open(os.path.join(folders['fluent_flat'], _hex(0).lower() + '.png'),
       'w').close()
  eb = _package(root, 'emojibase-data', '17.0.0', 'MIT')
  os.makedirs(os.path.join(eb, 'meta'))
  with open(os.path.join(eb, 'meta', 'groups.json'), 'w') as f:
    json.dump(GROUPS, f)
  for locale in ('en', 'zh'):
    os.makedirs(os.path.join(eb, locale, 'shortcodes'))
    rows = [{'hexcode': _hex(i) + ('-FE0F' if i == 1 else ''),
             'label': f'thing {i}' if locale == 'en' else f'东西{i}',
             'tags': ([f'tag{i}', 'shared'] if locale == 'en' else
                      [f'标签{i}']),
             'group': 0 if _subgroup(i) < 2 else 1, 'subgroup': _subgroup(i)}
            for i in range(N)]
    rows.append({'hexcode': '1F3FB', 'label': 'skin', 'group': 2,
                 'subgroup': 3})  # a component: not a concept
    rows.append({'hexcode': '1F1E6', 'label': 'letter a'})  # no group
    with open(os.path.join(eb, locale, 'data.json'), 'w') as f:
      json.dump(rows, f, ensure_ascii=False)
    if locale == 'en':
      with open(os.path.join(eb, 'en', 'shortcodes', 'cldr.json'), 'w') as f:
        json.dump({_hex(i): f'code_{i}' for i in range(N)}, f)
  return root


def config(src, **emoji_settings):
  c = fixtures.data_config_for('emoji', src)
  c.emoji.update(dict(locales='en,zh', held_out_share=0.25, users=7,
                      text_queries=3, hard_negatives=2, catalogue_styles=2),
                 **emoji_settings)
  return c


def stage(src, c=None):
  out = tempfile.mkdtemp()
  emoji.stage(src, out, c or config(src))
  return out, {n: pq.read_table(os.path.join(out, f'{n}.parquet')).to_pylist()
               for n in ('items', 'search', 'impressions', 'captions')}


class EmojiReaderTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.src = write_packages(tempfile.mkdtemp())
    cls.out, cls.t = stage(cls.src)

  def test_items_are_concepts_drawn_in_two_styles_or_more(self):
    items = self.t['items']
    keys = {r['item'].split('/')[0] for r in items}
    self.assertEqual(keys, {_hex(i) for i in range(N - 1)})  # not the last
    self.assertLen(items, 2 * (N - 1))  # catalogue_styles=2 of 4
    self.assertGreater(len({r['style'] for r in items}), 2)  # drawn per key
    r = next(r for r in items if r['item'].startswith(f'{_hex(2)}/'))
    self.assertEqual((r['title'], r['group'], r['subgroup']),
                     ('thing 2', 'animals-nature', 'animal-mammal'))
    self.assertEqual(r['image'], f'images/{r["style"]}_{_hex(2)}.png')
    # The empty 1f600.png lost to 1f600-fe0f.png: the concept's colour.
    im = np.asarray(Image.open(os.path.join(
        self.out, f'images/fluent_flat_{_hex(0)}.png')))
    np.testing.assert_allclose(im[8, 8, :3], _drawing(0, 'x').getpixel(
        (10, 10))[:3], atol=2)
    self.assertEqual(im[0, 0, 3], 0)  # transparency kept for the converter

  def test_queries_are_another_style_or_labels_tags_aliases(self):
    titles = {r['item'].split('/')[0]: r['title'] for r in self.t['items']}
    item_images = {r['image'] for r in self.t['items']}
    image = [r for r in self.t['search'] if r['query_image']]
    text = [r for r in self.t['search'] if r['query_text']]
    self.assertLen(image, 4 * (N - 1))  # 2 query styles x 2 items
    for r in image:
      key, style = r['item'].split('/')
      q = os.path.basename(r['query_image'])
      self.assertTrue(q.endswith(f'_{key}.png'), q)
      self.assertNotEqual(q[:-len(f'_{key}.png')], style)
      # A query drawing is never an item (it would be its own answer).
      self.assertNotIn(r['query_image'], item_images)
    self.assertLen(text, 3 * (N - 1))
    texts = {r['query_text'] for r in text}
    self.assertTrue(any(t.startswith('东西') for t in texts))
    self.assertTrue(any(t.startswith('code ') for t in texts))  # alias
    for r in text:
      self.assertNotEqual(r['query_text'], titles[r['item'].split('/')[0]])

  def test_query_slices_name_each_image_query_by_maker(self):
    with open(os.path.join(self.out, manifest.QUERY_SLICES_FILE)) as f:
      slices = json.load(f)['slices']
    maker = lambda style: style.split('_')[0]  # openmoji_*, fluent_*
    want = {'same maker': [], 'other maker': []}
    for i, r in enumerate(self.t['search']):
      if r['query_image']:
        key, style = r['item'].split('/')
        q = os.path.basename(r['query_image'])[:-len(f'_{key}.png')]
        want['same maker' if maker(q) == maker(style)
             else 'other maker'].append(i)
    self.assertEqual(slices, want)
    self.assertNotEmpty(want['same maker'])
    self.assertNotEmpty(want['other maker'])

  def test_held_out_concepts_and_hard_negatives(self):
    train = {r['item'].split('/')[0] for r in self.t['search']
             if r['split'] == 'train'}
    test = {r['item'].split('/')[0] for r in self.t['search']
            if r['split'] == 'test'}
    self.assertLen(test, round(0.25 * (N - 1)))
    self.assertEmpty(train & test)
    caption_keys = {os.path.basename(r['image'])[:-4].split('_')[-1]
                    for r in self.t['captions']}
    self.assertEqual(caption_keys, train)
    self.assertEmpty({r['image'] for r in self.t['captions']} &
                     {r['image'] for r in self.t['items']})
    items = {r['item'] for r in self.t['items']}
    for r in self.t['search']:
      key = r['item'].split('/')[0]
      self.assertLen(r['hard_negatives'], 2)
      for n in r['hard_negatives']:
        self.assertIn(n, items)
        nk = n.split('/')[0]
        self.assertNotEqual(nk, key)
        i, j = int(key, 16) - 0x1F600, int(nk, 16) - 0x1F600
        self.assertEqual(_subgroup(i), _subgroup(j))
    # Impressions: each bought item a click, its negatives not, and every
    # item listed once.
    imp = self.t['impressions']
    self.assertEqual(sum(r['label'] for r in imp), len(self.t['search']))
    self.assertEqual({r['item'] for r in imp}, items)

  def test_other_maker_queries(self):
    _, t = stage(self.src, config(self.src, queries='other_maker',
                                  catalogue_styles=1))
    maker = lambda style: style.split('_')[0]  # openmoji_*, fluent_*
    image = [r for r in t['search'] if r['query_image']]
    self.assertLen(image, 2 * (N - 1))  # the other maker's two styles
    for r in image:
      key, style = r['item'].split('/')
      q = os.path.basename(r['query_image'])[:-len(f'_{key}.png')]
      self.assertNotEqual(maker(q), maker(style))
    # The same maker's other style is neither a query nor an item.
    self.assertLen(t['items'], N - 1)
    with self.assertRaisesRegex(ValueError, "emoji.queries = 'same'"):
      emoji.stage(self.src, tempfile.mkdtemp(), config(self.src,
                                                       queries='same'))

  def test_licences_recorded_and_deterministic(self):
    with open(os.path.join(self.out, 'LICENSES.md')) as f:
      text = f.read()
    for line in ('| openmoji | 17.0.0 | CC-BY-SA-4.0 |',
                 '| @lobehub/fluent-emoji-3d | 1.1.0 | MIT |',
                 '| emojibase-data | 17.0.0 | MIT |'):
      self.assertIn(line, text)
    self.assertIn('Attribution-ShareAlike 4.0 International (fake)', text)
    self.assertEqual(stage(self.src)[1]['search'], self.t['search'])

  def test_converts_with_licences_and_white_background(self):
    m, d = fixtures.convert(config(self.src))
    self.assertEqual(m.num_items, 2 * (N - 1) + 1)
    self.assertTrue(os.path.isfile(os.path.join(d, 'LICENSES.md')))
    # The slices name session ids: the converted search log's rows.
    with open(os.path.join(d, manifest.QUERY_SLICES_FILE)) as f:
      slices = json.load(f)['slices']
    held = builders.load_table(d, manifest.SEARCH, 'test')
    imaged = set(held['session_id'][held['query_is_image']].tolist())
    named = set(slices['same maker']) | set(slices['other maker'])
    self.assertContainsSubset(imaged, named)
    text = set(held['session_id'][~held['query_is_image']].tolist())
    self.assertEmpty(text & named)
    splits = m.tables[manifest.SEARCH]['splits']
    self.assertEqual(splits['test'], 7 * round(0.25 * (N - 1)))
    items = builders.load_table(d, manifest.ITEMS, 'catalogue')
    np.testing.assert_array_equal(items['image'][1:, 0, 0], 255)
    test = builders.load_table(d, 'mmrec_search', 'test')
    self.assertEqual(int(test['query_is_image'].sum()),
                     4 * round(0.25 * (N - 1)))

  def test_errors_name_the_package_or_setting(self):
    src = write_packages(tempfile.mkdtemp())
    with self.assertRaisesRegex(ValueError, 'at least two styles'):
      emoji.stage(src, tempfile.mkdtemp(), config(src, styles='fluent_3d'))
    with self.assertRaisesRegex(ValueError, "unknown style 'noto'"):
      emoji.stage(src, tempfile.mkdtemp(), config(src, styles='fluent_3d,noto'))
    with self.assertRaisesRegex(ValueError, 'must include en'):
      emoji.stage(src, tempfile.mkdtemp(), config(src, locales='zh'))
    shutil.rmtree(os.path.join(src, 'node_modules', 'openmoji', 'black'))
    with self.assertRaisesRegex(columns.InputError,
                                'no folder black/svg .style openmoji_black'):
      emoji.stage(src, tempfile.mkdtemp(), config(src))
    shutil.rmtree(os.path.join(src, 'node_modules', 'emojibase-data'))
    with self.assertRaisesRegex(columns.InputError,
                                'package emojibase-data not found.*make '
                                'realdata'):
      emoji.stage(src, tempfile.mkdtemp(), config(src))
    with self.assertRaisesRegex(columns.InputError, 'package .* not found'):
      dataset_job.run(config(tempfile.mkdtemp()),
                      os.path.join(tempfile.mkdtemp(), 'd'))

  def test_broken_drawings_are_left_out_up_to_a_share(self):
    src = write_packages(tempfile.mkdtemp())
    folder = os.path.join(src, 'node_modules', '@lobehub', 'fluent-emoji-3d',
                          'assets')
    def spoil(i):
      with open(os.path.join(folder, _hex(i).lower() + '.webp'), 'w') as f:
        f.write('not an image')
    spoil(3)  # one of 23: left out, with a warning
    with self.assertLogs(level='WARNING') as logs:
      out, t = stage(src)
    self.assertIn('1 of 23 drawings of style fluent_3d', logs.output[0])
    self.assertNotIn(f'{_hex(3)}/fluent_3d', {r['item'] for r in t['items']})
    self.assertNotIn(f'images/fluent_3d_{_hex(3)}.png',
                     {r['query_image'] for r in t['search']})
    self.assertFalse(os.path.exists(os.path.join(
        out, f'images/fluent_3d_{_hex(3)}.png')))
    spoil(4)  # two of 23 (over 5%): a broken package
    with self.assertRaisesRegex(columns.InputError,
                                '2 of 23 drawings could not be drawn'):
      emoji.stage(src, tempfile.mkdtemp(), config(src))

  @absltest.skipUnless(importlib.util.find_spec('resvg_py'),
                       'resvg-py (the realdata extra) is not installed')
  def test_svg_drawings_are_rasterised(self):
    src = write_packages(tempfile.mkdtemp(), svg=True)
    out, t = stage(src)
    im = np.asarray(Image.open(os.path.join(
        out, f'images/openmoji_color_{_hex(5)}.png')))
    self.assertEqual(im.shape, (16, 16, 4))
    np.testing.assert_allclose(im[8, 8, :3], _drawing(5, 'x').getpixel(
        (10, 10))[:3], atol=2)
    self.assertEqual(im[0, 0, 3], 0)
    self.assertLen(t['items'], 2 * (N - 1))


if __name__ == '__main__':
  absltest.main()
