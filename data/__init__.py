"""Text in, packed int32 batches out.

builders (tfds builders for the stdlib and a text folder) -> sources (which corpus) -> tokenizers (sentencepiece,
byte) -> packing (rows with segment ids) -> pipeline (`make_dataset`, the trainer's entry point). Nothing is
imported here so that `import data` stays free of TensorFlow until a dataset is actually opened.
"""
