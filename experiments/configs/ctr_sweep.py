r"""Every CTR variant x several seeds -> one comparison table vs. the ID model.

 (experiments/id_search.py): {field of ctr: values to trypython -m experiments.main --config=experiments/configs/ctr_sweep.py \
 (experiments/id_search.py): {field of ctr: values to try    --config.data_dir=/tmp/mmrec/world \
 (experiments/id_search.py): {field of ctr: values to try    --config.vectors_path=/tmp/mmrec/scl/item_vectors.npz \
 (experiments/id_search.py): {field of ctr: values to try    --workdir=/tmp/mmrec/ctr

Runs each variant of experiments/configs/ctr.py (including `id_stats`, the
ID-statistics LR floor: deterministic, so its std over seeds is 0) in
`<workdir>/<variant>/seed_<k>/` (MAKE stage A shared by 'make' and
'simtier_make' of a seed, in `<workdir>/make_stage_a/seed_<k>/`), skipping
runs whose `ctr_eval.json` is complete, then writes `ctr_table.json` and
`ctr_table.md`: AUC / GAUC / logloss (mean and std over seeds), relative
deltas vs. the ID model paired by seed (and 95% intervals from a paired
user-level bootstrap of the runs' predictions.npz), the same per exposure
group and on new items, and the oracle ceiling; and `cosine_histogram.json`
(target-behaviour cosines of sampled test impressions, clicked vs. not, for
the report). With `id` and `id_stats` among the variants, both also run once
(seed 0) on the validation split (`<workdir>/validation/`): the stronger on
each metric is the baseline the claims judge gains against
(ctr_table.json `baseline`). Before any of that, `id_search` tunes the ID
model on the validation split within `id_search_budget` runs (seed 0,
`<workdir>/validation/id_search/`), and every variant trains on the chosen
settings (ctr_table.json `id_search`, a table in ctr_table.md and the
report). Default world, 3 seeds, 2-core CPU: ~2 hours, plus the search
(up to 8 ID runs, more with 2 epochs).
:tiny has the headline model's ID-similarity control only
(simtier_make@ids, in place of simtier_official@ids), to keep it short.
"""

import ml_collections

from experiments.configs import ctr


def get_config(arg=None):
 (experiments/id_search.py): {field of ctr: values to trytiny = arg == 'tiny'
 (experiments/id_search.py): {field of ctr: values to tryc = ml_collections.ConfigDict()
 (experiments/id_search.py): {field of ctr: values to tryc.job = 'ctr_sweep'
 (experiments/id_search.py): {field of ctr: values to try# `<model>@ids`: the same model over the ID-similarity control table
 (experiments/id_search.py): {field of ctr: values to try# (mmrec/id_vectors.py), so a multimodal gain is read against "similarity
 (experiments/id_search.py): {field of ctr: values to try# structure from IDs" with the model held fixed (claims.py: content beats
 (experiments/id_search.py): {field of ctr: values to try# ID similarity compares simtier_make with simtier_make@ids).
 (experiments/id_search.py): {field of ctr: values to try# `simtier_official@image`: over the image tower's vectors alone (the
 (experiments/id_search.py): {field of ctr: values to try# paper's online result is for image representations; skipped, with the
 (experiments/id_search.py): {field of ctr: values to try# reason, where vectors_path has no image table).
 (experiments/id_search.py): {field of ctr: values to trycontrols = ('simtier_make@ids',) + (() if tiny else
 (experiments/id_search.py): {field of ctr: values to try                                    ('simtier_official@ids',))
 (experiments/id_search.py): {field of ctr: values to tryc.variants = ','.join(ctr.VARIANTS + controls + ('simtier_official@image',))
 (experiments/id_search.py): {field of ctr: values to tryc.seeds = 1 if tiny else 3
 (experiments/id_search.py): {field of ctr: values to tryc.data_dir = ''  # '' = <workdir>/world, built if missing
 (experiments/id_search.py): {field of ctr: values to tryc.vectors_path = ''
 (experiments/id_search.py): {field of ctr: values to try# Test impressions sampled for cosine_histogram.json (what SimTier sees).
 (experiments/id_search.py): {field of ctr: values to tryc.histogram_impressions = 20_000
 (experiments/id_search.py): {field of ctr: values to try# User draws of the paired bootstrap (ctr_table's 95% intervals, the
 (experiments/id_search.py): {field of ctr: values to try# claims' verdicts): >= 1000 for a stable 2.5% / 97.5% percentile.
 (experiments/id_search.py): {field of ctr: values to tryc.bootstrap_resamples = 200 if tiny else 1000
 (experiments/id_search.py): {field of ctr: values to tryc.ctr = ctr.get_config('id,tiny' if tiny else 'id')  # shared settings
 (experiments/id_search.py): {field of ctr: values to try# Final evaluations only: the table, the bootstrap and the claims read the
 (experiments/id_search.py): {field of ctr: values to try# final state's predictions, never a run's eval history.
 (experiments/id_search.py): {field of ctr: values to tryc.ctr.eval_history = False
 (experiments/id_search.py): {field of ctr: values to try# The ID model's settings chosen per dataset on the validation split
 (experiments/id_search.py): {field of ctr: values to try# (experiments/id_search.py): {field of ctr: values to try, the first its
 (experiments/id_search.py): {field of ctr: values to try# own}, coordinate ascent on id_search_metric (num_epochs first), at most
 (experiments/id_search.py): {field of ctr: values to try# id_search_budget settings (seed 0); every variant then trains on the
 (experiments/id_search.py): {field of ctr: values to try# chosen settings.
 (experiments/id_search.py): {field of ctr: values to try# Empty = ctr's settings as they are (:tiny: the plumbing's tests).
 (experiments/id_search.py): {field of ctr: values to tryc.id_search = ml_collections.ConfigDict()
 (experiments/id_search.py): {field of ctr: values to tryif not tiny:
 (experiments/id_search.py): {field of ctr: values to try  c.id_search.update(dict(
 (experiments/id_search.py): {field of ctr: values to try      dense_lr=(c.ctr.dense_lr, 3e-4, 3e-3),
 (experiments/id_search.py): {field of ctr: values to try      embed_lr=(c.ctr.embed_lr, 1e-2),
 (experiments/id_search.py): {field of ctr: values to try      num_epochs=(1, 2),  # the one-epoch phenomenon: measured, not assumed
 (experiments/id_search.py): {field of ctr: values to try      attention=(c.ctr.attention, 'dot'),
 (experiments/id_search.py): {field of ctr: values to try      match_features=(True, False)))
 (experiments/id_search.py): {field of ctr: values to tryc.id_search_budget = 8  # 1 + every other value above: 1 + 2 + 1 + 1 + 1 + 1
 (experiments/id_search.py): {field of ctr: values to tryc.id_search_metric = 'gauc'
 (experiments/id_search.py): {field of ctr: values to tryreturn c
