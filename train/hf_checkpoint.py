"""ringlm checkpoints <-> Hugging Face Llama directories: `--mode=export` and `checkpoint.init_from_hf`.

The tensor conversion is models/hf_llama.py and the tokenizer files data/hf_tokenizer.py; this module wires them to
runs. Export restores a checkpoint onto the command's mesh and gathers each parameter to process 0, which writes
the directory (so the model must fit in one host's memory). Import reads the safetensors memory-mapped, one tensor
at a time, and each process builds only its own devices' shards of each parameter (`make_array_from_callback`),
so no host holds a second full copy. The source is checked against the config before anything compiles
(configs/validate.py).
"""

import functools
import operator
import os
import pathlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from configs.errors import ConfigError
from configs.sections import Config
from data import hf_tokenizer
from data import tokenizers
from models import hf_llama
from train import checkpoint as checkpoint_lib
from train.runtime import Runtime
from train.state import StateSetup

README_FILE = 'README.md'

# What transformers' LlamaForCausalLM (always causal) does differently from how each objective trained the model.
_MASK_NOTES = {
    'prefix_lm': 'It was trained as a prefix LM: the keys of each document\'s prefix were visible to every query of '
                 'the document (bidirectional), the rest causal. LlamaForCausalLM has no such mask: it runs the '
                 'model fully causal, which this model never saw, so its outputs differ from ringlm\'s on the '
                 'prefix. Pass a 4D attention mask that opens the prefix to reproduce training.',
    'masked_lm': 'It was trained as a masked LM: every key of a document was visible to every query '
                 '(bidirectional) and the model predicts the token at its own position, not the next one. '
                 'LlamaForCausalLM runs it causally and reads its logits as next-token predictions; neither matches '
                 'training. Use the weights with a bidirectional mask and read logits at the masked positions.',
}


def export_dir(config: Config, workdir: str) -> pathlib.Path:
  return pathlib.Path(config.export.dir or os.path.join(workdir, 'hf')).expanduser()


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole array on this host, gathered from the other processes' devices when it spans them."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def export(runtime: Runtime, config: Config, workdir: str) -> pathlib.Path:
  """`--mode=export`: the checkpoint `checkpoint.step` (or the latest) of `workdir` as a Hugging Face directory.

  The output directory and the checkpoint are checked before the data (the tokenizer) is opened."""
  if config.model.architecture != 'decoder':
    raise ConfigError('model.architecture', config.model.architecture, 'export writes a LlamaForCausalLM directory, '
                      'which has no encoder; only model.architecture=decoder exports (a T5-style export is not built)')
  out = export_dir(config, workdir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ConfigError('export.dir', str(out), 'exists and is not empty; remove it or choose another export.dir')
  steps = checkpoint_lib.all_steps(os.path.join(workdir, 'checkpoints'))
  if not steps:
    raise ConfigError('--workdir', workdir, 'no checkpoint to export there; train first (--mode=train)')
  step = config.checkpoint.step if config.checkpoint.step >= 0 else max(steps)
  if step not in steps:
    raise ConfigError('checkpoint.step', step, f'no such checkpoint in {workdir}; it has steps {steps}')
  run = runtime.run(config, workdir)
  ckpt = run.checkpointer()
  try:
    with runtime.active():
      params = jax.tree.map(_to_host, ckpt.restore(run.setup, step)['params'])
  finally:
    ckpt.close()
  if runtime.is_main:
    write(out, params, config, run.data.tokenizer)
    print(f'exported step {step} of {workdir} to {out}', flush=True)
  return out


def write(out: pathlib.Path, params: dict, config: Config, tokenizer: tokenizers.Tokenizer) -> list[str]:
  """config.json, generation_config.json, the weights, the tokenizer files and (for a non-causal objective) a
  README.md on the mask; returns the file names."""
  ids = {'bos_id': tokenizer.bos_id, 'eos_id': tokenizer.eos_id,
         'pad_id': tokenizer.pad_id if tokenizer.has_pad else None}
  hf_llama.save_config(out, hf_llama.llama_config(config.model, max_position_embeddings=config.data.seq_len,
                                                  dtype=config.export.dtype, **ids),
                       hf_llama.generation_config(**ids))
  files = [hf_llama.CONFIG_FILE, hf_llama.GENERATION_CONFIG_FILE]
  files += hf_llama.save_weights(out, params, config.model, dtype=config.export.dtype,
                                 max_shard_bytes=config.export.max_shard_bytes)
  files += hf_tokenizer.save(out, tokenizer, model_max_length=config.data.seq_len)
  note = _MASK_NOTES.get(config.objective)
  if note:
    (out / README_FILE).write_text(f'# ringlm export ({config.objective})\n\n{note}\n')
    files.append(README_FILE)
  return files


def import_params(source: str, setup: StateSetup) -> dict:
  """float32 params from an HF directory, each leaf placed straight onto its sharding of the run's mesh."""
  def place(path: hf_llama.LeafPath, x: np.ndarray) -> jax.Array:
    sharding = functools.reduce(operator.getitem, path, setup.shardings['params'])
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  try:
    return hf_llama.load_params(source, setup.model_cfg, place)
  except ValueError as e:
    raise ConfigError('checkpoint.init_from_hf', source, str(e).splitlines()[0]) from None
