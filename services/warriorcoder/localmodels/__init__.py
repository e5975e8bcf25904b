"""The local model backend: Python models served on a local Triton with the vLLM contract.

Behind ``triton_url: local`` and ``warriorcoder up --demo``: the arena's services talk to these
servers exactly as to a real Triton vLLM backend.

- ``pytriton``: serving Python models on a local Triton (PyTriton): tensors, command line, config,
  signals and the serve loop, shared by every local server (``triton_env`` for launchers);
- ``jobs``: what a server asks of a model (``Job``, ``Outcome``, the ``Engine`` protocol);
- ``batching``: dynamic batching of one model's requests onto its worker thread;
- ``hf_engine``: batched generation and guided choice with a Hugging Face causal LM (torch);
- ``hf_server``: the Hugging Face server (``python -m warriorcoder.localmodels.hf_server``);
- ``demo``: tiny random-weight models with real tokenizers and chat templates, built offline.

The contract itself is ``warriorcoder.runtime.vllm``. The scripted test doubles served the same way
live in ``warriorcoder.testing``.
"""
