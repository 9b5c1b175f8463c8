r"""Drives the authors' MUSE trainer (alimama-tech/MUSE) on the CPU for the
`peer` benchmark (bench_peer.py), as a user of that code would: its own
`main.create_model`, `FeatureEmbeddingDict`, `Trainer`, data loader and
`config/<method>.json`, none of it copied here.

Run as a script by a Python that has torch and MUSE's requirements (numpy,
pandas, pyarrow), e.g. the `[peer]` extra's; it imports nothing of ours, so
that Python need not have mmrec or jax:

  python experiments/muse_worker.py '<request JSON>'

The request: muse_dir (a checkout), data_dir (bench_peer.write_muse_layout's
output: train/, test/, feature_map/), method ('din'), batch_size, history,
keep_top, num_batches (read and kept; cycled), seed, warm (untimed steps
first; default 2), args (overrides of the config JSON). The CPU changes MUSE's launcher (main.py, made
for torchrun on GPUs) needs, made here rather than in its files:
- device 'cpu' where main.py passes the CUDA rank, and no
  `torch.cuda.set_device` / `.cuda()`;
- a one-process gloo group (file:// rendezvous): the embedding layer asks
  `dist.get_rank()` and the trainer all-reduces its metrics even alone;
- the id maps and SCL table looked up in numpy (feature_map_on_cuda and
  scl_emb_on_cuda false; the faster on a CPU);
- the data loader without pinned memory and workers; its batches are read
  once through MUSE's own loader and kept in memory (preloaded), as ours.

Protocol: one JSON line on stdout when ready, then per command line on stdin
one JSON line back. MUSE's own prints go to stderr.
- {"run": n, "metrics": true|false}: n training steps (`forward_step` on
  the next of the cycled batches) timed -> {"seconds": s}. metrics=false
  stubs the per-step AUC / GAUC / confusion matrix `forward_step` computes
  (its GAUC is a Python loop over the batch's users), leaving the model's
  work; metrics=true keeps them, as its `train_epoch` runs the step. Neither
  calls `update_metric` (cheap accumulation; it divides by zero when no
  user of the batch has both labels, as in these synthetic batches).
- {"predict": true}: P(click) of each row of test/, in order -> {"probs"}
  (scored by the caller with the same metrics as ours).
- {"quit": true}.
"""

import contextlib
import json
import os
import sys
import tempfile
import time


def _build(req):
  """MUSE's trainer on the CPU, built as its main.train_and_eval_ddp does."""
  sys.path.insert(0, req['muse_dir'])
  import torch  # pylint: disable=g-import-not-at-top
  import torch.distributed as dist  # pylint: disable=g-import-not-at-top
  import torch.optim as optim  # pylint: disable=g-import-not-at-top
  import main as muse_main  # pylint: disable=g-import-not-at-top
  import trainer as muse_trainer  # pylint: disable=g-import-not-at-top
  from model.base_model import feature_embedding  # pylint: disable=g-import-not-at-top
  from utils import muse_dataset  # pylint: disable=g-import-not-at-top

  if 'threads' in req:
    torch.set_num_threads(int(req['threads']))
  rendezvous = os.path.join(tempfile.mkdtemp(), 'gloo')
  dist.init_process_group('gloo', init_method=f'file://{rendezvous}', rank=0,
                          world_size=1)
  with open(os.path.join(req['muse_dir'], 'config',
                         f'{req["method"]}.json')) as f:
    args = json.load(f)
  data = req['data_dir']
  args.update(train_data_path=os.path.join(data, 'train'),
              test_data_path=os.path.join(data, 'test'),
              feature_map_path=os.path.join(data, 'feature_map'),
              batch_size=req['batch_size'], keep_top=req['keep_top'],
              seed=req['seed'], use_ddp=False, shuffle=False,
              # Id maps and the SCL table as numpy (its CPU lookup path):
              # ~1.6x faster steps here than as torch tensors ("on_cuda"
              # true, the configs' default, placed on the CPU).
              feature_map_on_cuda=False, scl_emb_on_cuda=False)
  args.update(req.get('args', {}))
  muse_main.setup_seed(args['seed'])
  device = torch.device('cpu')

  def loader(mode):
    return muse_dataset.create_dataloader(
        data_dir=args[f'{mode}_data_path'], mode=mode,
        batch_size=args['batch_size'], max_seq_len=req['history'],
        num_workers=0, shuffle=False, pin_memory=False, rank=0, world_size=1)

  embedding_layer = feature_embedding.FeatureEmbeddingDict(
      dim=args['embedding_dim'], feature_map_dir=args['feature_map_path'],
      device=device, world_size=1, item_id_p90=args['item_id_p90'],
      scl_emb_p90=args['scl_emb_p90'],
      feature_map_on_cuda=args['feature_map_on_cuda'],
      scl_emb_on_cuda=args['scl_emb_on_cuda'])
  din_model = muse_main.create_model(args)
  dense = ([p for p in embedding_layer.get_dense_parameters()
            if p.requires_grad] +
           [p for p in din_model.parameters() if p.requires_grad])
  trainer = muse_trainer.Trainer(
      dense_model=din_model, sparse_model=embedding_layer,
      dense_opt=optim.AdamW(dense, lr=args['dense_lr'], fused=True),
      sparse_opt=optim.SparseAdam(embedding_layer.get_sparse_parameters(),
                                  lr=args['sparse_lr']),
      train_dataloader=loader('train'), test_dataloader=loader('test'),
      args=args, device=device, world_size=1, keep_top=args['keep_top'],
      rank=0)
  batches = []
  for batch in trainer.train_dataloader:
    batches.append(batch)
    if len(batches) == req['num_batches']:
      break
  return torch, muse_trainer, trainer, batches


@contextlib.contextmanager
def _no_metrics(muse_trainer, torch):
  """The trainer's per-step metric functions replaced by constants."""
  names = ('calc_auc_gpu', 'calc_gauc_gpu', '_confusion_matrix_at_thresholds')
  saved = {n: getattr(muse_trainer, n) for n in names}
  zeros = lambda *_: (torch.zeros(200, dtype=torch.long),) * 4
  muse_trainer.calc_auc_gpu = lambda *_: (0.0, 1, 1, 0)
  muse_trainer.calc_gauc_gpu = lambda *_: (0.0, 0.0, 1)
  muse_trainer._confusion_matrix_at_thresholds = zeros  # pylint: disable=protected-access
  try:
    yield
  finally:
    for n, f in saved.items():
      setattr(muse_trainer, n, f)


def main():
  req = json.loads(sys.argv[1])
  out = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)  # MUSE prints freely; our protocol keeps the real stdout
  torch, muse_trainer, trainer, batches = _build(req)
  trainer.init_metric()
  step = 0

  def train(n):
    nonlocal step
    for _ in range(n):
      trainer._batch_index = step  # pylint: disable=protected-access
      # forward_step edits its batch dict (pops label, adds keys): a copy.
      trainer.forward_step(dict(batches[step % len(batches)]), mode='train')
      step += 1

  def predict():
    """P(click) of every test row, in order: forward_step in eval mode, its
    AUC function (which receives the probabilities) recording them."""
    probs = []
    with _no_metrics(muse_trainer, torch):
      muse_trainer.calc_auc_gpu = lambda label, prop: (
          probs.append(prop[:, 1].tolist()), (0.0, 1, 1, 0))[1]
      with torch.no_grad():
        for batch in trainer.test_dataloader:
          trainer.forward_step(batch, mode='eval')
    return [x for p in probs for x in p]

  with _no_metrics(muse_trainer, torch):
    train(req.get('warm', 2))
  out.write(json.dumps({'ready': True, 'batches': len(batches),
                        'threads': torch.get_num_threads(),
                        'torch': torch.__version__}) + '\n')
  out.flush()
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get('quit'):
      break
    if 'run' in cmd:
      ctx = (contextlib.nullcontext() if cmd.get('metrics')
             else _no_metrics(muse_trainer, torch))
      with ctx:
        t0 = time.perf_counter()
        train(cmd['run'])
        reply = {'seconds': time.perf_counter() - t0}
    elif cmd.get('predict'):
      reply = {'probs': predict()}
    else:
      reply = {'error': f'unknown command {cmd}'}
    out.write(json.dumps(reply) + '\n')
    out.flush()


if __name__ == '__main__':
  main()
