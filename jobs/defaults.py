"""The job's defaults, named once: the CLI's options, ``RunRequest``, ``WorkerConfig`` and the Ray
executor's config read them here (no imports: the CLI reads them before it loads anything)."""

MODEL = "tiny"  # the built-in random-weight model: the tool tries out offline
BATCH_SIZE = 16  # rows per UNet batch
SHARD_SIZE = 1000  # rows per shard: the unit of scheduling, commit and resume
SHARD_RETRIES = 2  # a shard whose actor died runs again this many times
ACTOR_RESTARTS = 8  # Ray restarts a dead actor (reloading its models) this many times
