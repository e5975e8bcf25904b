"""Test support: scripted LLMs and the local Triton server that serves them.

Usage::

    python -m warriorcoder.testing.scripted_server \
        --models services/warriorcoder/testing/scripted-arena-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002

- ``scripted``: deterministic stand-ins for the miner, answerer, scorer and judge (role read off
  the prompt), behind the test fixtures and ``warriorcoder up --scripted``;
- ``scripted_server``: those models bound on a real Triton (``warriorcoder.localmodels.pytriton``)
  with the vLLM backend's contract;
- ``fakes``: in-process fakes of the stages' interfaces (inference on the scripted models,
  publishing, KV) for millisecond unit tests.

Product code does not import this package (a layout test checks), only the launcher's
``--scripted`` mode and the tests.
"""
