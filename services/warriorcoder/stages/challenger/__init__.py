"""The challenger: mines coding challenges from attackers' own chat-template prefixes."""
