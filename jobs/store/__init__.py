"""The output store: OUT's paths, layouts, metadata, storage backends (local, S3) and the job lease."""
