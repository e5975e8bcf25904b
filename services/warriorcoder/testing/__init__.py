"""Developer tools: scripted LLMs and a local PyTriton server that serves them.

Usage::

    python -m warriorcoder.testing.scripted_server \
        --models services/warriorcoder/testing/scripted-arena-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002
"""
