"""How far a tokenizer's per-id byte counts (what bits per byte divide by) are from the text's real UTF-8 bytes.

  .venv/bin/python scripts/token_byte_count.py --spm_model_type=word

Reads the first --batches validation batches of configs/compare_tokenizers.py's setup with the given sentencepiece
model type, and compares, per document piece, the sum of the tokenizer's token_bytes with the UTF-8 length of the
decoded ids. Prints one JSON line. Sentencepiece's word model under byte fallback counts an unseen word's leading
space as the three bytes of U+2581, which is why this exists.
"""

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from configs import compare_tokenizers  # noqa: E402
from configs.sections import Config  # noqa: E402
from data import pipeline  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--spm_model_type', default='word', choices=('bpe', 'unigram', 'word', 'char'))
  parser.add_argument('--batches', type=int, default=8)
  args = parser.parse_args()
  c = compare_tokenizers.get_config()
  c.data.spm_model_type = args.spm_model_type
  if args.spm_model_type == 'char':
    c.data.vocab_size = 354
  config = Config.from_dict(c.to_dict())
  data = pipeline.make_dataset(config.data, config.seed, config.data.eval_split)
  tok = data.tokenizer
  counted = decoded = 0
  for step in range(args.batches):
    batch = data.batch(step, config.train.batch_size)
    for tokens_S, segments_S in zip(batch['tokens'], batch['segment_ids']):
      for segment in np.unique(segments_S[segments_S > 0]):
        ids = tokens_S[segments_S == segment]
        ids = ids[(ids != tok.bos_id) & (ids != tok.eos_id)]
        counted += int(tok.token_bytes[ids].sum())
        decoded += len(tok.decode(ids).encode('utf-8'))
  print(json.dumps({'spm_model_type': args.spm_model_type, 'counted_bytes': counted, 'decoded_bytes': decoded,
                    'ratio': counted / decoded}))


if __name__ == '__main__':
  main()
