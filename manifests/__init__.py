"""sdbatch.manifests"""
