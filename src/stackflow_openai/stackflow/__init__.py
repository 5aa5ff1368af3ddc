"""The StackFlow device client: codec, connection, sys calls and unit handles."""
