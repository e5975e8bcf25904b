"""What every service shares: settings, the JetStream bus, KV compare-and-set, the Triton client,
chat templates, metrics, HTTP endpoints, logs and the service runner."""
