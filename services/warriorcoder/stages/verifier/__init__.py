"""The verifier stage: runs both answers against the challenge's tests in a sandbox."""
