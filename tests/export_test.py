"""Tests for the exported CTR model (mmrec.serving.export + mmrec.serving_model):
served scores equal the offline evaluation's, in this process and in a fresh
one that imports no training code; versions, pointer and input checks.

One short 'id' and one 'simtier_official' run on the small CTR world are
trained and exported once per process (fixtures.exported_ctr); their
compiled steps are shared with the offline pass (ctr_steps.programs is
cached).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import fixtures
import jax
import numpy as np

from experiments.configs import export as export_config
from mmrec import ctr_data
from mmrec import ctr_model
from mmrec import embedding
from mmrec.data import builders
from mmrec.serving import export
from mmrec.serving import layout
from mmrec.serving import model_export
from mmrec.serving import served_model
from mmrec.serving import vector_store

VARIANTS = ('id', 'simtier_official')


def _test_rows(data_dir):
  """Every test-day row, in order, as one host batch."""
  ds = ctr_data.CtrData.load(data_dir).dataset('test', 1024)
  parts = [ds[i] for i in range(len(ds))]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def store_table(serving_dir, model):
  with vector_store.VectorStore(os.path.join(serving_dir, layout.VECTORS)) as s:
    return model.device_table(s.dense())


class ExportTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.runs = {v: fixtures.exported_ctr(v) for v in VARIANTS}
    cls.rows = _test_rows(fixtures.small_ctr_world_dir())

  def _model(self, variant):
    """(ServingModel of the CURRENT version, its device vector table)."""
    serving = self.runs[variant][2]
    model = served_model.ServingModel(served_model.current(
        os.path.join(serving, layout.MODELS)))
    return model, store_table(serving, model)

  @parameterized.parameters(*VARIANTS)
  def test_served_scores_equal_offline_evaluation(self, variant):
    c, wd, _, _ = self.runs[variant]
    pred = fixtures.offline_predictions(c, wd)
    model, table = self._model(variant)
    self.assertEqual(model.needs_vectors, variant != 'id')
    probs, logits = model.score(self.rows, table, with_logits=True)
    np.testing.assert_array_equal(pred['item_id'], self.rows['item_id'])
    offline = 1 / (1 + np.exp(-pred['logit'].astype(np.float64)))
    np.testing.assert_allclose(probs, offline, rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits, pred['logit'], rtol=0, atol=1e-5)

  @parameterized.parameters(*VARIANTS)
  def test_request_scores_equal_row_scores(self, variant):
    """The request program (one user's history once, its candidates as
    rows) scores like the per-row program, which equals offline evaluation
    (above): for C = 1, within a bucket, and past the largest (chunks)."""
    model, table = self._model(variant)
    spec = model.manifest['request']
    self.assertEqual(spec['file'], served_model.REQUEST_FILE)
    self.assertIn(served_model.REQUEST_FILE, model.manifest['sha256'])
    for i, c in ((0, 1), (5, 13), (40, 70)):
      user = {k: self.rows[k][i:i + 1] for k in spec['user']}
      cands = {k: self.rows[k][i:i + c] for k in spec['candidates']}
      rows = dict({k: np.repeat(v, c, 0) for k, v in user.items()}, **cands)
      got, logits = model.score_request(user, cands, table, with_logits=True)
      want, want_logits = model.score(rows, table, with_logits=True)
      self.assertEqual(got.shape, (c,))
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
      np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-5)

  def test_version_without_request_program_still_serves_requests(self):
    """A version exported before request.jaxexport existed: score_request
    scores the repeated rows with the row program."""
    _, _, _, directory = self.runs['id']
    old = os.path.join(self.root, 'v_old')
    shutil.copytree(directory, old)
    os.remove(os.path.join(old, served_model.REQUEST_FILE))
    with open(os.path.join(old, layout.MANIFEST)) as f:
      m = json.load(f)
    del m['request'], m['sha256'][served_model.REQUEST_FILE]
    with open(os.path.join(old, layout.MANIFEST), 'w') as f:
      json.dump(m, f)
    model = served_model.ServingModel(old)
    self.assertIsNone(model.request_fields)
    spec = self._model('id')[0].request_fields
    user = {k: self.rows[k][3:4] for k in spec['user']}
    cands = {k: self.rows[k][3:12] for k in spec['candidates']}
    rows = dict({k: np.repeat(v, 9, 0) for k, v in user.items()}, **cands)
    np.testing.assert_allclose(model.score_request(user, cands),
                               model.score(rows), rtol=0, atol=0)

  def test_fresh_process_without_training_code(self):
    _, _, serving, directory = self.runs['simtier_official']
    rows = {k: v[:37] for k, v in self.rows.items()}
    inputs = os.path.join(self.root, 'rows.npz')
    np.savez(inputs, **rows)
    model, table = self._model('simtier_official')
    want = model.score(rows, table)
    script = f"""
import json, sys
import numpy as np
from mmrec.serving import service, served_model, vector_store  # the whole server
m = served_model.ServingModel({directory!r})
with vector_store.VectorStore({os.path.join(serving, 'vectors')!r}) as s:
  table = m.device_table(s.dense())
rows = dict(np.load({inputs!r}))
p = m.score(rows, table)
bad = sorted(k for k in sys.modules if k == 'flax' or k.startswith(
    ('flax.', 'optax', 'orbax', 'grain', 'tensorflow_datasets',
     'mmrec.train', 'mmrec.ctr_', 'mmrec.embed', 'mmrec.item_encoder',
     'mmrec.pretrain', 'mmrec.sharding', 'mmrec.checkpointing',
     'mmrec.serving.export', 'mmrec.serving.model_export',
     'mmrec.serving.layout', 'mmrec.serving.nearline')))
print(json.dumps({{'p': p.tolist(), 'bad': bad}}))
"""
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
    out = subprocess.run([sys.executable, '-c', script], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    self.assertEqual(got['bad'], [])
    np.testing.assert_allclose(got['p'], want, rtol=0, atol=1e-6)

  def test_manifest_pointer_and_reexport(self):
    _, wd, serving, directory = self.runs['id']
    self.assertEqual(served_model.current(os.path.join(serving, 'models')),
                     directory)
    with open(os.path.join(directory, layout.MANIFEST)) as f:
      m = json.load(f)
    self.assertEqual((m['step'], m['variant'], m['item_capacity']),
                     (10, 'id', 4096))
    self.assertIsNone(m['vectors'])
    self.assertEqual(m['vector_store']['version'], 1)
    # Exporting again keeps the version and the store as they are.
    self.assertEqual(export.export(export_config.get_config('tiny'), wd,
                                   serving), directory)
    self.assertEqual(sorted(os.listdir(os.path.join(serving, 'models'))),
                     ['CURRENT', 'v10'])
    with vector_store.VectorStore(os.path.join(serving, 'vectors')) as s:
      self.assertEqual(s.version, 1)
      # The world's declared item features, joined by /score.
      self.assertEqual(s.attr_names, ('category', 'shop'))
    self.assertEqual(m['schema'], {
        'user': {'age': 7, 'gender': 2, 'city': 40},
        'item': {'category': 16, 'shop': 60}, 'seq': ['category'],
        'bags': {}, 'user_bags': {}})
    self.assertEqual(m['item_attributes'], ['category', 'shop'])

  def test_exported_encoder_equals_the_model(self):
    model, params = fixtures.untrained_encoder()
    serving = tempfile.mkdtemp()
    shutil.copytree(os.path.join(self.runs['id'][2], layout.VECTORS),
                    os.path.join(serving, layout.VECTORS))
    directory = fixtures.export_untrained_encoder(serving)
    encoder = served_model.ServingEncoder(directory)
    items = builders.load_table(fixtures.small_ctr_world_dir(), 'mmrec_items',
                                'catalogue')
    want = model.apply({'params': params}, items['image'][:5],
                       items['title'][:5], method='encode_item')
    got = np.stack([encoder.encode(items['image'][i], items['title'][i])
                    for i in range(5)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    self.assertEqual(encoder.dim, 32)
    with self.assertRaisesRegex(served_model.ModelError, 'image'):
      encoder.encode(items['image'][0][:4], items['title'][0])

  def test_bad_inputs(self):
    model, table = self._model('simtier_official')
    rows = {k: v[:3] for k, v in self.rows.items()}
    with self.assertRaisesRegex(served_model.ModelError, 'needs the item'):
      model.score(rows)
    with self.assertRaisesRegex(served_model.ModelError, "'seq_item'"):
      model.score(dict(rows, seq_item=rows['seq_item'][:, :4]), table)
    with self.assertRaisesRegex(served_model.ModelError, r"\['shop'\]"):
      model.score({k: v for k, v in rows.items() if k != 'shop'}, table)
    with self.assertRaisesRegex(served_model.ModelError, 'capacity'):
      model.device_table(np.zeros((5000, 16), np.int8))
    user = {k: rows[k][:1] for k in model.request_fields['user']}
    cands = {k: rows[k] for k in model.request_fields['candidates']}
    with self.assertRaisesRegex(served_model.ModelError, r"\['shop'\]"):
      model.score_request(user, {k: v for k, v in cands.items()
                                 if k != 'shop'}, table)
    with self.assertRaisesRegex(served_model.ModelError, 'category'):
      model.score_request(user, dict(cands, category=cands['category'][:2]),
                          table)
    # 70 rows: a chunk of the largest bucket (64) + one of 8, same scores.
    many = {k: np.concatenate([v] * 24)[:70] for k, v in rows.items()}
    np.testing.assert_allclose(model.score(many, table)[:3],
                               model.score(rows, table), atol=1e-6)

  def test_non_finite_parameters_are_not_exported(self):
    table = np.zeros((5, 4), np.float32)
    table[3, 1] = np.nan
    variables = {'params': {'embed': {'item': {'embedding': table}}}}
    models = os.path.join(tempfile.mkdtemp(), 'models')
    with self.assertRaisesRegex(
        ValueError, r'params/embed/item/embedding \(5, 4\) holds 1 NaN'):
      model_export.write_version(
          models, 3, None, variables, variant='id', sizes={}, schema={},
          seq_len=1, store={}, uses_vectors=False, capacity=8, buckets=(8,))
    self.assertFalse(os.path.exists(models))


class ServeDecisionTest(absltest.TestCase):
  """make serve (export.run with only_if_none): serves the committed
  version, exports only into a directory without one (or when asked)."""

  def test_keeps_a_newer_current_version(self):
    serving = tempfile.mkdtemp()
    models = os.path.join(serving, layout.MODELS)
    for step in (10, 16):  # the demo run's version, then near-line's
      os.makedirs(os.path.join(models, f'v{step}'))
      with open(os.path.join(models, f'v{step}', layout.MANIFEST), 'w') as f:
        json.dump({'step': step}, f)
    with open(os.path.join(models, layout.CURRENT), 'w') as f:
      f.write('v16\n')
    config = export_config.get_config('tiny')
    config.ctr_workdir, config.only_if_none = '/the/demo/ctr/run', True
    exported = []
    with mock.patch.object(export, 'export',
                           lambda c, wd, s: exported.append(wd) or 'new'):
      self.assertEqual(export.run(config, serving),
                       os.path.join(models, 'v16'))
      self.assertEqual(exported, [])  # CURRENT stays at near-line's v16
      config.only_if_none = False  # make serve EXPORT=1
      self.assertEqual(export.run(config, serving), 'new')
      config.only_if_none = True
      # A CURRENT naming a version that is not whole: exported again.
      with open(os.path.join(models, layout.CURRENT), 'w') as f:
        f.write('v17\n')
      self.assertEqual(export.run(config, serving), 'new')
      # No version at all: exported.
      self.assertEqual(export.run(config, tempfile.mkdtemp()), 'new')
      self.assertEqual(exported, ['/the/demo/ctr/run'] * 3)
      config.ctr_workdir = ''
      with self.assertRaisesRegex(ValueError, 'no model version in .* make '
                                  'demo'):
        export.run(config, tempfile.mkdtemp())


class _Killed(BaseException):
  """Stands for a kill -9: raised right after a rename, caught by nothing."""


def _program_text(path):
  """An exported program's StableHLO without its source locations (the
  call stack it was exported from, which differs between call sites)."""
  with open(path, 'rb') as f:
    text = jax.export.deserialize(bytearray(f.read())).mlir_module()
  return re.sub(r' loc\(#loc\d*\)', '', '\n'.join(
      line for line in text.splitlines() if not line.startswith('#loc')))


def _snapshot(serving_dir):
  """What a serving directory holds, by visible path (the temporaries an
  interrupted build leaves under '.' names are invisible to readers):
  file contents, JSON without its creation times, programs without their
  source locations (a manifest's checksums of them checked, then dropped)."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(serving_dir):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    for name in filenames:
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, serving_dir)
      if name.startswith('.'):
        continue
      if name.endswith('.json'):
        with open(path) as f:
          m = json.load(f)
        m.pop('created', None)
        for program, digest in list(m.get('sha256', {}).items()):
          if program.endswith('.jaxexport'):
            assert served_model.sha256_file(
                os.path.join(dirpath, program)) == digest, (rel, program)
            del m['sha256'][program]
        out[rel] = m
      elif name.endswith('.jaxexport'):
        out[rel] = _program_text(path)
      elif name.endswith('.npz'):
        with np.load(path) as f:
          out[rel] = {k: f[k].tolist() for k in f.files}
      else:
        with open(path, 'rb') as f:
          out[rel] = f.read()
  return out


class InterruptedExportTest(absltest.TestCase):

  def test_kill_after_any_step_then_rerun_equals_uninterrupted(self):
    """Defect: killed between the store's CURRENT and the index, a rerun
    skipped the index and the directory never started. Killed after each
    durable step (every rename into a visible path), a rerun now leaves
    the uninterrupted export's directory."""
    _, wd, _, _ = fixtures.exported_ctr('id')
    config = export_config.get_config('tiny')
    # The export job's path after its restore (done once: seconds each).
    model, variables, ctr_config, step, data = export.restore(
        os.path.abspath(wd))

    def run_export(serving):
      model_export.export_version(config, serving, step, model, variables,
                                  ctr_config, data, checkpoint=wd)
    root = tempfile.mkdtemp()
    ref = os.path.join(root, 'ref')
    run_export(ref)
    want = _snapshot(ref)
    self.assertIn(os.path.join(layout.INDEX, 'index.json'), want)
    real = {'rename': os.rename, 'replace': os.replace}
    kill_at = 1
    while True:
      serving = os.path.join(root, f'killed_{kill_at}')
      done = []

      def renamed(src, dst, fn, serving=serving, done=done):
        fn(src, dst)
        rel = os.path.relpath(os.path.abspath(dst), serving)
        if not rel.startswith('..') and not any(
            p.startswith('.') for p in rel.split(os.sep)):
          done.append(rel)
          if len(done) == kill_at:
            raise _Killed(rel)

      with mock.patch.object(os, 'rename', lambda a, b: renamed(
          a, b, real['rename'])), mock.patch.object(
              os, 'replace', lambda a, b: renamed(a, b, real['replace'])):
        try:
          run_export(serving)
          finished = True
        except _Killed:
          finished = False
      if finished:  # no rename left to kill after
        break
      run_export(serving)  # the rerun
      got = _snapshot(serving)
      self.assertEqual(sorted(got), sorted(want), f'killed after {done[-1]}')
      self.assertEqual([k for k in want if got[k] != want[k]], [],
                       f'killed after {done[-1]} (rename {kill_at})')
      kill_at += 1
    # store v1 + CURRENT, index.faiss + index.json, models/v10 + CURRENT
    self.assertEqual(kill_at, 7)


class LongHistoryExportTest(parameterized.TestCase):
  """Models trained with a long history (a converted dataset's 30-long one
  beside the 10 recent): SimTier over it, or a GSU retrieving from it."""

  @parameterized.parameters('simtier', 'gsu')
  def test_served_scores_equal_offline_evaluation(self, kind):
    c, wd, _, directory = fixtures.exported_long_ctr(kind)
    rows = _test_rows(c.data_dir)
    model = served_model.ServingModel(directory)
    self.assertEqual(model.long_seq_len, 30)
    want_long = ({'long_seq_item', 'long_seq_category', 'long_seq_mask'}
                 if kind == 'gsu' else {'long_seq_item', 'long_seq_mask'})
    self.assertEqual({f for f in model.fields if f.startswith('long_')},
                     want_long)
    self.assertEqual(model.fields['long_seq_item']['shape'], [30])
    self.assertEqual({f for f in model.request_fields['user']
                      if f.startswith('long_')}, want_long)
    table = store_table(os.path.dirname(os.path.dirname(directory)), model)
    pred = fixtures.offline_predictions(c, wd)
    probs, logits = model.score(rows, table, with_logits=True)
    np.testing.assert_array_equal(pred['item_id'], rows['item_id'])
    offline = 1 / (1 + np.exp(-pred['logit'].astype(np.float64)))
    np.testing.assert_allclose(probs, offline, rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits, pred['logit'], rtol=0, atol=1e-5)
    # The request layout: the user's two histories once, its candidates.
    spec = model.request_fields
    for i, n in ((0, 1), (7, 13), (20, 70)):
      user = {k: rows[k][i:i + 1] for k in spec['user']}
      cands = {k: rows[k][i:i + n] for k in spec['candidates']}
      repeated = dict({k: np.repeat(v, n, 0) for k, v in user.items()},
                      **cands)
      np.testing.assert_allclose(model.score_request(user, cands, table),
                                 model.score(repeated, table), rtol=0,
                                 atol=1e-6)

  def test_world_model_reads_no_long_history(self):
    _, _, _, directory = fixtures.exported_ctr('simtier_official')
    model = served_model.ServingModel(directory)
    self.assertEqual(model.long_seq_len, 0)
    self.assertFalse([f for f in model.fields if f.startswith('long_')])


class BagMatchExportTest(absltest.TestCase):
  """A model whose match features read a category bag (MovieLens genres):
  the behaviours' bags are served (L, K) fields of the user's row."""

  def test_exported_programs_equal_the_model(self):
    emb = embedding.EmbeddingConfig(
        num_users=6, num_items=12, item_bags=(('genres', 5),),
        match_bags=('genres',), dim=4)
    model = ctr_model.CtrModel(ctr_model.CtrConfig(
        emb, variant='id', attention_mlp=(4,), tower=(6,)))
    rng = np.random.default_rng(0)
    bags = rng.integers(0, 5, (12, 3))
    n, length = 5, 4
    seq = rng.integers(1, 12, (1, length))
    mask = np.array([[False, True, True, True]])
    user = {'user_id': np.array([2]), 'seq_item': np.where(mask, seq, 0),
            'seq_mask': mask, 'seq_genres': np.where(mask[..., None],
                                                     bags[seq], 0)}
    items = rng.integers(0, 12, n)
    cands = {'item_id': items, 'genres': bags[items]}
    rows = dict({k: np.repeat(v, n, 0) for k, v in user.items()}, **cands)
    rows = {k: v.astype(bool if k == 'seq_mask' else np.int32)
            for k, v in rows.items()}
    variables = model.init(jax.random.key(0), rows)
    schema = {'user': {}, 'item': {}, 'seq': ['genres'],
              'bags': {'genres': {'size': 5, 'width': 3}}, 'user_bags': {}}
    exported, fields = model_export.export_function(model, variables,
                                                    length, None, schema)
    self.assertEqual(fields['seq_genres']['shape'], [length, 3])
    want = model.apply(variables, rows)
    got = exported.call(variables, rows, None)['logit']
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    request, spec = model_export.request_function(model, variables, length,
                                                  None, schema)
    self.assertEqual(spec['user']['seq_genres']['shape'], [length, 3])
    one = {k: rows[k][:1] for k in spec['user']}
    got = request.call(variables, one, {k: rows[k] for k in
                                        spec['candidates']}, None)['logit']
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


if __name__ == '__main__':
  absltest.main()
