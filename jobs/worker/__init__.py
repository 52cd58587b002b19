"""The shard worker: a shard's rows read, prepared, generated and written."""
