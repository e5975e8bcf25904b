"""The wire contract of WarriorCoder Arena: messages, subjects and their generated schemas."""
