"""The house rules of ../shared/design/architecture.md ("nevers"), held
against the code's own imports (static: every module under mmrec/ and
experiments/ is parsed, none is run).

A rule broken here is a structural regression: the message names the module
and what it imports.
"""

import ast
import os
import pathlib

from absl.testing import absltest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Jobs: leaves that only experiments/ (and tests) import.
JOBS = ('mmrec.train_scl', 'mmrec.train_ctr', 'mmrec.embed',
        'mmrec.serving.export', 'mmrec.serving.nearline')
# Model and training code that data/ must not know.
MODELS = ('mmrec.layers', 'mmrec.image_encoder', 'mmrec.text_encoder',
          'mmrec.multimodal_encoder', 'mmrec.item_encoder',
          'mmrec.contrastive', 'mmrec.embedding', 'mmrec.ctr_',
          'mmrec.simtier', 'mmrec.make', 'mmrec.retrieval',
          'mmrec.id_stats', 'mmrec.train_', 'mmrec.pretrain_eval')
PRETRAINING = ('mmrec.train_scl', 'mmrec.pretrain_eval', 'mmrec.item_encoder',
               'mmrec.multimodal_encoder', 'mmrec.image_encoder',
               'mmrec.text_encoder', 'mmrec.contrastive', 'mmrec.embed',
               'mmrec.retrieval_eval')
CTR = ('mmrec.ctr_', 'mmrec.train_ctr', 'mmrec.id_stats', 'mmrec.simtier',
       'mmrec.make', 'mmrec.retrieval', 'mmrec.embedding', 'mmrec.id_vectors')
RUNTIME = ('mmrec.serving.service', 'mmrec.serving.state',
           'mmrec.serving.rows', 'mmrec.serving.requests',
           'mmrec.serving.served_model', 'mmrec.serving.vector_store',
           'mmrec.serving.ann_index', 'mmrec.serving.impression_log')


def _module(path):
  rel = path.relative_to(ROOT).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _imports(path):
  """Modules a file imports ('from a import b' counts as a.b when a.b is a
  module of ours, else a)."""
  tree = ast.parse(path.read_text(), str(path))
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        out.add(sub if _source(sub) else node.module)
  return out


def _source(module):
  base = ROOT.joinpath(*module.split('.'))
  return base.with_suffix('.py').exists() or (base / '__init__.py').exists()


def _graph():
  files = sorted([*ROOT.glob('mmrec/**/*.py'),
                  *ROOT.glob('experiments/**/*.py')])
  return {_module(f): _imports(f) for f in files}


def _starts(name, prefixes):
  return any(name == p or name.startswith(p if p.endswith('_') else p + '.')
             or (p.endswith('_') and name.startswith(p)) for p in prefixes)


class ArchitectureTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.graph = _graph()
    cls.lib = {m: i for m, i in cls.graph.items() if m.startswith('mmrec')}

  def _never(self, importers, imported, why):
    bad = sorted((m, i) for m, imps in self.lib.items() if importers(m)
                 for i in imps if _starts(i, imported) and i != m)
    self.assertEqual(bad, [], why)

  def test_library_never_imports_experiments_or_jobs(self):
    self._never(lambda m: True, ('experiments',),
                'library modules import experiments/')
    self._never(lambda m: m not in JOBS, JOBS,
                'jobs are leaves: only experiments/ imports them')

  def test_data_knows_no_models(self):
    self._never(lambda m: m.startswith('mmrec.data'), MODELS,
                'data/ imports model or training code')

  def test_ctr_never_imports_pretraining(self):
    self._never(lambda m: _starts(m, CTR), PRETRAINING,
                'CTR code imports pre-training or embedding code (it reads '
                'the vector table)')

  def test_embedding_job_is_inference(self):
    self._never(lambda m: m == 'mmrec.embed',
                ('mmrec.train_scl', 'mmrec.pretrain_eval', 'mmrec.train_lib'),
                'the embedding job imports the trainer or its evaluation')

  def test_serving_runtime_imports_no_training_code(self):
    self._never(lambda m: m in RUNTIME,
                ('flax', 'optax', 'orbax', 'grain', 'mmrec.train_',
                 'mmrec.ctr_', 'mmrec.sharding', 'mmrec.checkpointing',
                 'mmrec.serving.export', 'mmrec.serving.nearline',
                 'mmrec.serving.model_export', 'mmrec.serving.layout'),
                'the serving runtime imports training code or the jobs')

  def test_train_lib_knows_no_dataset(self):
    self._never(lambda m: m == 'mmrec.train_lib', ('mmrec.data',),
                'train_lib imports a dataset module')

  def test_only_checkpointing_imports_orbax(self):
    users = sorted(m for m, imps in self.graph.items()
                   if any(_starts(i, ('orbax',)) for i in imps))
    self.assertEqual(users, ['mmrec.checkpointing'])

  def test_only_main_defines_flags(self):
    definers = sorted(
        str(f.relative_to(ROOT))
        for f in [*ROOT.glob('mmrec/**/*.py'),
                  *ROOT.glob('experiments/**/*.py')]
        if 'flags.DEFINE' in f.read_text())
    self.assertEqual(definers, [os.path.join('experiments', 'main.py')])

  def test_no_import_cycle(self):
    ours = {m: {i for i in imps if i in self.graph}
            for m, imps in self.graph.items()}
    state = {}

    def visit(m, path):
      state[m] = 'open'
      for i in sorted(ours[m]):
        if state.get(i) == 'open':
          self.fail('import cycle: ' + ' -> '.join(path + [m, i]))
        if i not in state:
          visit(i, path + [m])
      state[m] = 'done'
    for m in sorted(ours):
      if m not in state:
        visit(m, [])


if __name__ == '__main__':
  absltest.main()
