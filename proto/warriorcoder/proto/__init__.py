"""The wire contract of WarriorCoder Arena: the bus messages (``messages``), the KV documents and
shard lines (``state``), the subject and resource names (``subjects``), the streams, consumers and
buckets declared once (``topology``), and their generated schemas (``schema_gen``, ``schema/``)."""
