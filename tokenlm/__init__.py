"""tokenlm: VALL-E-style token language models over the codec's codes.

- :mod:`tokenlm.text`: offline English normalisation and G2P (gruut) and the fixed phoneme vocabulary;
- :mod:`tokenlm.shards` / :mod:`tokenlm.tokenize`: corpora as safetensors shards of codes ``[K, T]``
  + phoneme ids (``tokenwave tokenize``);
- :mod:`tokenlm.ar`: the autoregressive model of the first RVQ layer; :mod:`tokenlm.nar`: the
  non-autoregressive model of layers 2..K; :mod:`tokenlm.transformer`: their blocks and KV cache;
- :mod:`tokenlm.sampling` / :mod:`tokenlm.generate`: sampling, length guards, cached generation, NAR fill;
- :mod:`tokenlm.train` / :mod:`tokenlm.data`: ``tokenwave train-lm``; :mod:`tokenlm.continuation`:
  ``tokenwave continue``; :mod:`tokenlm.bench`: ``tokenwave bench-lm``;
- :mod:`tokenlm.pretrained`: ``save_lm`` / ``load_lm`` (float16 safetensors + config.json with its hash).
"""
