"""Developer tools: scripted LLMs and a local PyTriton server that serves them.

Usage::

    python -m services.devtools.triton_server \
        --models services/devtools/scripted-arena-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002
"""
