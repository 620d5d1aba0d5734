"""What every part of the harness shares: its error type, content hashes and cache directories, the dtypes
a configuration can name, and facts about the machine it runs on."""
