"""The model organism: a small Llama trained from scratch on the synthetic problems.

:mod:`stepdpo.organism.tokenizer` trains its BPE tokenizer, :mod:`stepdpo.stages.pretrain`
builds and trains the model; ``models.resolve_model("organism")`` builds it once and caches it.
"""
