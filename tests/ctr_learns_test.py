"""Training learns: SimTier with oracle concept vectors beats the ID model.

The small CTR world (fixtures.small_ctr_world_dir) has clicks that depend on
within-category taste, which the oracle concept vectors (plus noise) carry
and IDs see only through each item's few clicks. If the SimTier path or the
training loop broke (vectors ignored, similarities mis-binned, no gradient to
the SimTier weights), the two runs would score alike. Margins from
measurement: ID AUC 0.62 / GAUC 0.63, SimTier 0.65 / 0.66 (2 epochs of the
shrunk test config).
"""

from absl.testing import absltest
import fixtures

from mmrec import train_ctr


class OracleSimTierTest(absltest.TestCase):

  def test_simtier_with_oracle_vectors_beats_the_id_model(self):
    res = {}
    for variant in ('id', 'simtier_official'):
      config = fixtures.ctr_run_config(variant, num_epochs=2, log_every=100,
                                      checkpoint_every=1000)
      res[variant] = train_ctr.run(config, self.create_tempdir().full_path)
    for m in ('auc', 'gauc'):
      self.assertGreater(res['simtier_official'][m], res['id'][m] + 0.01, m)


if __name__ == '__main__':
  absltest.main()
