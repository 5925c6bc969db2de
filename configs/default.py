"""Every config key of ringlm with its default; presets override a few of these.

main.py turns this ml-collections config into the typed, checked sections of configs/sections.py once.

Shape letters, one meaning each across the code base (`x_BSD`, `q_BKGSE`, `tokens_RS`):
  B batch rows                   S sequence (query) length       T key/value (or cache) length
  D d_model                      H query heads                   K key/value heads
  G query heads per kv head, H/K E head dim                      F d_ff (SwiGLU hidden width)
  V vocabulary                   L layers                        Q query block length
  J key/value block length       C sequence chunk length (blockwise FFN and loss)
  N chunks or blocks along the sequence (a scan's length)       P sequence shards (devices on `length`)
  R packed rows of a split       M runs of a scaling sweep       U compute budgets
  X starting points of a fit's grid                              W fitted parameters (a scaling-law fit's 5)
"""

import ml_collections

# How parameter and activation dims (named in models/) map onto mesh axes; see sharding/rules.py.
LOGICAL_RULES = ('batch=data+fsdp,length=sequence,embed=fsdp,heads=tensor,kv_heads=tensor,mlp=tensor,vocab=tensor,'
                 'head_dim=,norm=,layers=')

# --mode=compare's variants: each a name and the config overrides that make it (see experiments/compare.py).
OBJECTIVE_VARIANTS = 'causal: objective=causal; prefix_lm: objective=prefix_lm; masked_lm: objective=masked_lm'

# ul2's denoisers, one drawn per document: UL2's R (regular spans), S (prefix LM), X (extreme) settings, equal odds.
UL2_MIXTURE = 'R:3:0.15=1; R:8:0.15=1; S=1; X:3:0.5=1; X:8:0.5=1; X:64:0.15=1; X:64:0.5=1'


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds params init, data order and objective noise
  c.objective = 'causal'  # causal | prefix_lm | masked_lm | span_corruption | ul2

  c.objectives = o = ml_collections.ConfigDict()
  o.mask_rate = 0.15  # masked_lm: chance that a real token is chosen (then 80% [MASK], 10% random, 10% kept)
  o.prefix_min_frac = 0.0  # prefix_lm: each document's prefix is floor(f * length), f ~ U[min_frac, max_frac]
  o.prefix_max_frac = 1.0  # prefix_lm: upper end of that range (prefix clipped to 1..length-1 tokens)
  o.noise_density = 0.15  # span_corruption: fraction of each document's corrupted tokens that become targets (T5)
  o.mean_span_length = 3.0  # span_corruption: mean length of a corrupted span, each replaced by one sentinel (T5)
  o.ul2_mixture = UL2_MIXTURE  # ul2: "mode:mean_span:noise_density=weight; ..." (S=weight: a prefix_lm split)

  c.model = m = ml_collections.ConfigDict()
  m.architecture = 'decoder'  # decoder | encoder_decoder (a bidirectional encoder, a causal decoder with cross-attention)
  m.num_layers = 2  # transformer blocks of the decoder architecture
  m.num_encoder_layers = 2  # encoder_decoder: encoder blocks
  m.num_decoder_layers = 2  # encoder_decoder: decoder blocks (each with self- and cross-attention)
  m.share_embeddings = True  # encoder_decoder: the encoder reads the decoder's token embedding (else its own)
  m.d_model = 128  # D: residual width
  m.num_heads = 4  # H: query heads
  m.num_kv_heads = 4  # K: key/value heads (GQA when K < H; H % K == 0)
  m.head_dim = 0  # E: per-head width; 0 means d_model // num_heads
  m.d_ff = 512  # F: SwiGLU hidden width
  m.attention = 'vanilla'  # vanilla | blockwise | ring
  m.attention_kernel = 'auto'  # auto / jax / pallas: fused blockwise (splash on TPU, Triton on GPU), ring hops (splash)
  m.ffn = 'standard'  # standard | blockwise (BPT: the MLP applied per sequence chunk)
  m.q_block = 128  # query block length for blockwise and ring attention
  m.kv_block = 128  # key/value block length for blockwise and ring attention
  m.ffn_block = 128  # sequence chunk length for the blockwise FFN
  m.rope_theta = 10_000.0  # RoPE base frequency
  m.norm_eps = 1e-6  # RMSNorm epsilon
  m.init_std = 0.02  # stddev of the normal init of embeddings and projections
  m.tie_embeddings = True  # LM head shares the token embedding
  m.dtype = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  m.remat = False  # recompute each block's activations in the backward pass
  m.scan_layers = False  # one scanned block instead of num_layers unrolled ones (faster compile)

  c.data = d = ml_collections.ConfigDict()
  d.text_dir = ''  # a folder of text files to train on; '' with tfds_name '' = the embedded stdlib corpus
  d.text_glob = '**/*.txt'  # which files under text_dir are documents
  d.tfds_name = ''  # a tfds catalogue name (e.g. 'c4/en:3.1.0'); read as is
  d.tfds_data_dir = ''  # tfds data dir for tfds_name ('' = tfds default, e.g. gs://... on a TPU VM)
  d.stream_shards = 1  # tfds_name: shards the split is read in, each a slice of every batch (set >= processes)
  d.shuffle_buffer = 1024  # tfds_name: packed rows shuffled in windows of this many (seeded by window); 0 = stored order
  d.text_key = 'text'  # feature holding the document text in a catalogue dataset
  d.train_split = 'train'  # split to train on
  d.eval_split = 'validation'  # split to evaluate on
  d.validation_percent = 5  # local corpora: percent of documents (by path hash) held out
  d.cache_dir = '~/.cache/ringlm'  # built tfds data, tokenizers and packed arrays (reused across runs)
  d.seq_len = 256  # S: tokens per packed row
  d.tokenizer = 'sentencepiece'  # sentencepiece | byte
  d.vocab_size = 2048  # V: tokenizer vocabulary (byte tokenizer: must be 256 + special ids + extra_ids)
  d.spm_model_type = 'bpe'  # bpe | unigram | char | word
  d.spm_max_chars = 20_000_000  # characters of training text fed to sentencepiece training
  d.extra_ids = 0  # top ids of the vocabulary that text never uses: span_corruption/ul2 sentinels (T5: 100)
  d.spm_model_path = ''  # an existing sentencepiece .model (e.g. Llama's tokenizer.model) used as is, its own ids

  c.train = t = ml_collections.ConfigDict()
  t.steps = 1000  # total optimizer steps
  t.batch_size = 16  # global batch, in packed sequences
  t.grad_accum_steps = 1  # microbatches per step (gradients summed, one update): activation memory / this
  t.learning_rate = 3e-3  # peak learning rate
  t.warmup_steps = 100  # linear warmup from 0 to learning_rate
  t.end_lr_fraction = 0.1  # cosine decay ends at learning_rate * end_lr_fraction
  t.weight_decay = 0.1  # AdamW decoupled weight decay
  t.decay_embeddings_and_norms = False  # apply weight decay to embeddings and norm scales too
  t.b1 = 0.9  # Adam beta1
  t.b2 = 0.95  # Adam beta2
  t.eps = 1e-8  # Adam epsilon
  t.grad_clip = 1.0  # global-norm clip; 0 disables
  t.log_every = 10  # steps between metric lines
  t.eval_every = 200  # steps between evaluations; 0 = only at the end
  t.eval_batches = 8  # validation batches per evaluation
  t.eval_probes = True  # also score the shared probes (train/probes.py) that compare objectives
  t.peak_flops_per_device = 0.0  # for MFU; 0 = look up by device kind (unknown kinds report no MFU)
  t.profile_start = 1  # first step (0-based) of a jax.profiler trace into WORKDIR/profile; step 0 compiles
  t.profile_steps = 0  # steps traced from profile_start; 0 = no trace

  c.estimate = e = ml_collections.ConfigDict()
  e.topology = ''  # --mode=estimate: compile for this TPU topology instead (e.g. v5e:2x2, v5p:2x2x1); needs libtpu

  c.checkpoint = k = ml_collections.ConfigDict()
  k.every_steps = 200  # steps between checkpoints (also saved at the end)
  k.keep = 3  # checkpoints kept
  k.init_from = ''  # a checkpoint dir to take params from when starting fresh
  k.init_from_hf = ''  # a Hugging Face Llama-family dir (safetensors) to take params from when starting fresh
  k.step = -1  # --mode=export: the checkpoint step to export; -1 = the latest

  c.mesh = h = ml_collections.ConfigDict()
  h.data = -1  # data-parallel axis; -1 = all devices left over by the other axes
  h.fsdp = 1  # parameter/optimizer sharding axis
  h.tensor = 1  # tensor-parallel axis (heads, MLP, vocab)
  h.sequence = 1  # sequence-parallel axis (ring attention)
  h.dcn_data = 1  # granules (TPU slices, else processes) the data axis spans over DCN; 1 = one flat mesh
  h.rules = LOGICAL_RULES  # logical axis name -> mesh axes ('+' joins several, empty = replicated)

  c.sample = g = ml_collections.ConfigDict()
  g.prompt = 'def '  # --mode=sample: text each sample continues
  g.max_new_tokens = 64  # --mode=sample: tokens generated per sample (stops early at end of document)
  g.temperature = 0.8  # --mode=sample: softmax temperature; 0 = greedy
  g.top_k = 40  # --mode=sample: sample among the k most likely tokens; 0 = all
  g.num_samples = 2  # --mode=sample: samples drawn, each from its own key

  c.compare = p = ml_collections.ConfigDict()
  p.variants = OBJECTIVE_VARIANTS  # --mode=compare: "name: key=value ...; ..."; the first is the baseline
  p.flops_budgets = (3e12, 1e13, 3e13)  # --mode=compare: executed training FLOPs per run; each variant runs at each

  c.export = e = ml_collections.ConfigDict()
  e.dir = ''  # --mode=export: output dir for the Hugging Face model; '' = WORKDIR/hf (must be absent or empty)
  e.dtype = 'float32'  # --mode=export: float32 | bfloat16 weights
  e.max_shard_bytes = 5_000_000_000  # --mode=export: weights above this go into numbered files plus an index

  c.scaling = s = ml_collections.ConfigDict()
  s.flops = (3e11, 1e12, 3e12)  # --mode=scaling: compute budgets C in training FLOPs, one isoFLOP curve each
  s.d_models = (24, 48, 72, 96, 120)  # candidate widths; depth, heads and d_ff follow from the rule
  s.window = 0.0  # a budget trains the widths whose N is within x window of N_c; 0 = every width at every budget
  s.centre_coefficient = 0.06  # N_c = centre_coefficient * C ** centre_exponent: where a budget's window is centred
  s.centre_exponent = 0.5  # see centre_coefficient (0.5: Chinchilla's N_opt ~ C^0.5)
  s.min_steps = 1  # every run must train at least this many optimizer steps (a budget too small is an error)
  s.aspect_ratio = 24  # width/depth rule: num_layers = max(1, round(d_model / aspect_ratio))
  s.head_dim = 24  # width/depth rule: num_heads = num_kv_heads = d_model / head_dim
  s.ffn_ratio = 3.0  # width/depth rule: d_ff = round(ffn_ratio * d_model)
  s.warmup_fraction = 0.1  # each run warms up for this fraction of its steps; its cosine decays over all of them
  s.points = ''  # --mode=fit: CSV with columns N, D, loss (C, run optional), e.g. a sweep's WORKDIR/scaling/points.csv
  s.predict_flops = (1e18, 1e21, 5.76e23)  # budgets to predict N_opt, D_opt and loss at (5.76e23: Chinchilla's)
  s.bootstrap = 100  # bootstrap refits behind the confidence intervals; 0 = point estimates only
  return c
